//! The `users` table: operators and their roles.

use sqlx::Row;

use yeet_proto::api::Role;

use super::{Store, StoreError, Wire, conflict};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub key_id: String,
    pub public_key: String,
    pub role: Wire<Role>,
    pub created_at: i64,
}

impl Store {
    pub async fn insert_user(
        &self,
        name: &str,
        key_id: &str,
        public_key: &str,
        role: Role,
        now: i64,
    ) -> Result<UserRow, StoreError> {
        sqlx::query_as::<_, UserRow>("INSERT INTO users (name, key_id, public_key, role, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id, name, key_id, public_key, role, created_at")
            .bind(name)
            .bind(key_id)
            .bind(public_key)
            .bind(role.as_str())
            .bind(now)
            .fetch_one(&self.writer)
            .await
            .map_err(conflict("a user with this name or key"))
    }

    pub async fn user_by_key(&self, key_id: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, name, key_id, public_key, role, created_at FROM users WHERE key_id = $1",
        )
        .bind(key_id)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        Ok(sqlx::query_as::<_, UserRow>(
            "SELECT id, name, key_id, public_key, role, created_at FROM users ORDER BY name",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// Deletes a user; returns its key id if it existed.
    pub async fn delete_user(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("DELETE FROM users WHERE name = $1 RETURNING key_id")
            .bind(name)
            .fetch_optional(&self.writer)
            .await?;
        Ok(row.map(|r| r.try_get("key_id")).transpose()?)
    }
}
