//! The `users` and `user_keys` tables: operators, their roles and scopes, and the keys they
//! sign with (several per person: a laptop, a CI runner).

use sqlx::{AssertSqlSafe, Row};

use yeet_proto::api::Role;

use super::{Store, StoreError, Wire, conflict};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub role: Wire<Role>,
    /// The user's scope (space-separated, as `join_tags` writes them); empty: the whole
    /// fleet.
    pub tags: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserKeyRow {
    pub key_id: String,
    pub user_id: i64,
    pub public_key: String,
    pub added_at: i64,
}

const USER_COLUMNS: &str = "id, name, role, tags, created_at";
const KEY_COLUMNS: &str = "key_id, user_id, public_key, added_at";

/// Why a change to users was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UserRefusal {
    NoSuchUser,
    /// It would leave no admin who acts on the whole fleet.
    LastUnscopedAdmin,
    /// A user keeps at least one key.
    LastKey,
    NoSuchKey,
}

/// What a change to a user should be, checked and applied in one exclusive transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    Role(Role),
    Tags(String),
    AddKey { key_id: String, public_key: String },
    RemoveKey(String),
    Remove,
}

/// The advisory lock (PostgreSQL) that serialises changes to users, so that two admins
/// demoting each other at once cannot leave the fleet without an unscoped admin.
const USERS_LOCK: i64 = 0x7965_6574_7573; // "yeetus"

/// Adds a key to a user, within the caller's transaction; a key in use is a conflict.
async fn insert_key(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    user_id: i64,
    key_id: &str,
    public_key: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO user_keys (key_id, user_id, public_key, added_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(key_id)
    .bind(user_id)
    .bind(public_key)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(conflict("a user with this key"))?;
    Ok(())
}

impl Store {
    /// Adds a user with its first key, in one transaction.
    pub async fn insert_user(
        &self,
        name: &str,
        key_id: &str,
        public_key: &str,
        role: Role,
        tags: &str,
        audit: &super::AuditEntry,
    ) -> Result<UserRow, StoreError> {
        // The change happens when its event says.
        let now = audit.at_ms / 1000;
        let mut tx = self.exclusive(USERS_LOCK).await?;
        let user = sqlx::query_as::<_, UserRow>(AssertSqlSafe(format!(
            "INSERT INTO users (name, role, tags, created_at, key_id, public_key) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {USER_COLUMNS}"
        )))
        .bind(name)
        .bind(role.as_str())
        .bind(tags)
        .bind(now)
        .bind(key_id)
        .bind(public_key)
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict("a user with this name or key"))?;
        insert_key(&mut tx, user.id, key_id, public_key, now).await?;
        self.append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(user)
    }

    /// The user a key belongs to, and the key.
    pub async fn user_by_key(
        &self,
        key_id: &str,
    ) -> Result<Option<(UserRow, UserKeyRow)>, StoreError> {
        let Some(key) = sqlx::query_as::<_, UserKeyRow>(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM user_keys WHERE key_id = $1"
        )))
        .bind(key_id)
        .fetch_optional(&self.reader)
        .await?
        else {
            return Ok(None);
        };
        Ok(self.user_where("id", key.user_id).await?.map(|u| (u, key)))
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        self.user_where("name", name.to_owned()).await
    }

    /// The user whose unique `column` (a name from this file, never input) equals `value`.
    async fn user_where<V>(
        &self,
        column: &'static str,
        value: V,
    ) -> Result<Option<UserRow>, StoreError>
    where
        V: for<'q> sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any> + Send + 'static,
    {
        Ok(sqlx::query_as::<_, UserRow>(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE {column} = $1"
        )))
        .bind(value)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY name"
        )))
        .fetch_all(&self.reader)
        .await?)
    }

    /// Every user's keys, oldest first.
    pub async fn list_user_keys(&self) -> Result<Vec<UserKeyRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserKeyRow>(AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM user_keys ORDER BY added_at, key_id"
        )))
        .fetch_all(&self.reader)
        .await?)
    }

    /// Applies `change` to the user named `name`, unless it would leave the fleet without
    /// an admin who acts on all of it, or the user without a key. Checked and written in
    /// one exclusive transaction. Returns the key ids that stopped working (to evict from
    /// caches) and the user as it is now (`None` once removed).
    pub async fn change_user(
        &self,
        name: &str,
        change: &UserChange,
        now: i64,
        audit: &super::AuditEntry,
    ) -> Result<Result<(Vec<String>, Option<UserRow>), UserRefusal>, StoreError> {
        let mut tx = self.exclusive(USERS_LOCK).await?;
        let Some(user) = sqlx::query_as::<_, UserRow>(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(Err(UserRefusal::NoSuchUser));
        };
        let keys: Vec<String> = sqlx::query("SELECT key_id FROM user_keys WHERE user_id = $1")
            .bind(user.id)
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get("key_id"))
            .collect::<Result<_, _>>()?;
        let unscoped_admin = user.role.0 == Role::Admin && user.tags.is_empty();
        let stays_unscoped_admin = match change {
            UserChange::Role(role) => *role == Role::Admin,
            UserChange::Tags(tags) => tags.is_empty(),
            UserChange::Remove => false,
            UserChange::AddKey { .. } | UserChange::RemoveKey(_) => true,
        };
        if unscoped_admin && !stays_unscoped_admin {
            let others: i64 = sqlx::query(
                "SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND tags = '' AND id <> $1",
            )
            .bind(user.id)
            .fetch_one(&mut *tx)
            .await?
            .try_get("n")?;
            if others == 0 {
                return Ok(Err(UserRefusal::LastUnscopedAdmin));
            }
        }
        let mut gone = Vec::new();
        match change {
            UserChange::Role(role) => {
                sqlx::query("UPDATE users SET role = $1 WHERE id = $2")
                    .bind(role.as_str())
                    .bind(user.id)
                    .execute(&mut *tx)
                    .await?;
                gone = keys;
            }
            UserChange::Tags(tags) => {
                sqlx::query("UPDATE users SET tags = $1 WHERE id = $2")
                    .bind(tags)
                    .bind(user.id)
                    .execute(&mut *tx)
                    .await?;
                gone = keys;
            }
            UserChange::AddKey { key_id, public_key } => {
                insert_key(&mut tx, user.id, key_id, public_key, now).await?;
            }
            UserChange::RemoveKey(key_id) => {
                if !keys.contains(key_id) {
                    return Ok(Err(UserRefusal::NoSuchKey));
                }
                if keys.len() == 1 {
                    return Ok(Err(UserRefusal::LastKey));
                }
                sqlx::query("DELETE FROM user_keys WHERE key_id = $1")
                    .bind(key_id)
                    .execute(&mut *tx)
                    .await?;
                // users.key_id names one of the user's current keys (see migration 0017).
                sqlx::query(
                    "UPDATE users SET (key_id, public_key) = (SELECT key_id, public_key FROM user_keys WHERE user_id = $1 ORDER BY added_at, key_id LIMIT 1) WHERE id = $1",
                )
                .bind(user.id)
                .execute(&mut *tx)
                .await?;
                gone = vec![key_id.clone()];
            }
            UserChange::Remove => {
                sqlx::query("DELETE FROM user_keys WHERE user_id = $1")
                    .bind(user.id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM users WHERE id = $1")
                    .bind(user.id)
                    .execute(&mut *tx)
                    .await?;
                self.append_audit(&mut tx, audit).await?;
                tx.commit().await?;
                return Ok(Ok((keys, None)));
            }
        }
        let now_user = sqlx::query_as::<_, UserRow>(AssertSqlSafe(format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id = $1"
        )))
        .bind(user.id)
        .fetch_one(&mut *tx)
        .await?;
        self.append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(Ok((gone, Some(now_user))))
    }
}
