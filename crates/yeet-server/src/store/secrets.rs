//! The `secrets`, `secret_grants` and `secret_changes` tables: ciphertext and its version,
//! which host may fetch what (and fetched which version), and who changed what when.

use sqlx::Row;

use super::{Store, StoreError, Tx, conflict};

/// A secret's row without its ciphertext (listings never load content).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SecretRow {
    pub name: String,
    pub version: i64,
    pub created_at: i64,
    pub created_by: String,
    pub updated_at: i64,
    pub updated_by: String,
}

/// A grant, with the host's current name.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GrantRow {
    pub secret: String,
    pub host_id: i64,
    pub host: String,
    pub granted_at: i64,
    pub granted_by: String,
    pub fetched_version: Option<i64>,
    pub fetched_at: Option<i64>,
    /// The tag that gave it; '' for a direct grant.
    pub via_tag: String,
}

/// A secret granted to a tag.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TagGrantRow {
    pub secret: String,
    pub tag: String,
    pub granted_at: i64,
    pub granted_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ChangeRow {
    pub secret: String,
    pub at: i64,
    pub author: String,
    pub action: String,
    pub detail: String,
}

/// A change about to be recorded with the write it describes.
pub struct Change<'a> {
    pub author: &'a str,
    pub action: &'a str,
    pub detail: String,
    pub at: i64,
    /// Its audit event, appended in the same transaction with `detail` added.
    pub audit: Option<&'a super::AuditEntry>,
}

const SECRET_COLUMNS: &str = "name, version, created_at, created_by, updated_at, updated_by";

impl Store {
    /// Records a change in the secret's history and, with its audit event, in the audit log.
    async fn record_change(
        &self,
        tx: &mut Tx<'_>,
        secret: &str,
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        if let Some(audit) = change.audit {
            let mut audit = audit.clone();
            if let Some(details) = audit.details.as_object_mut() {
                details.insert("change".into(), change.detail.clone().into());
            }
            self.append_audit(tx, &audit).await?;
        }
        record(tx, secret, change).await
    }
}

async fn record(tx: &mut Tx<'_>, secret: &str, change: &Change<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO secret_changes (secret, at, author, action, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(secret)
    .bind(change.at)
    .bind(change.author)
    .bind(change.action)
    .bind(&change.detail)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Stores a new secret at version 1, grants it to `host_ids`, and records the change.
    /// `Conflict` when the name is taken.
    pub async fn insert_secret(
        &self,
        name: &str,
        ciphertext: &[u8],
        host_ids: &[i64],
        change: &Change<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query("INSERT INTO secrets (name, version, ciphertext, created_at, created_by, updated_at, updated_by) VALUES ($1, 1, $2, $3, $4, $3, $4)")
            .bind(name)
            .bind(ciphertext)
            .bind(change.at)
            .bind(change.author)
            .execute(&mut *tx)
            .await
            .map_err(conflict("secret"))?;
        for id in host_ids {
            insert_grant(&mut tx, name, *id, change).await?;
        }
        self.record_change(&mut tx, name, change).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces a secret's ciphertext with the next version; the new version, or `None`
    /// when there is no such secret. The change is recorded with that version as its detail.
    pub async fn rotate_secret(
        &self,
        name: &str,
        ciphertext: &[u8],
        change: &Change<'_>,
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let version = sqlx::query("UPDATE secrets SET version = version + 1, ciphertext = $1, updated_at = $2, updated_by = $3 WHERE name = $4 RETURNING version")
            .bind(ciphertext)
            .bind(change.at)
            .bind(change.author)
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get::<i64, _>("version"))
            .transpose()?;
        if let Some(v) = version {
            let change = Change {
                detail: format!("version {v}"),
                ..*change
            };
            self.record_change(&mut tx, name, &change).await?;
            tx.commit().await?;
        }
        Ok(version)
    }

    /// Grants (`grant = true`) or revokes a secret for hosts and for tags (every host
    /// carrying one, now and later), recording the change, in one transaction; false when
    /// there is no such secret. Granting twice or revoking what was not granted is a no-op.
    pub async fn set_grants(
        &self,
        name: &str,
        host_ids: &[i64],
        tags: &[String],
        grant: bool,
        change: &Change<'_>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        // Touch the secret's row first: it must exist, and concurrent changes to its
        // grants serialise on it.
        let exists =
            sqlx::query("UPDATE secrets SET updated_at = $1, updated_by = $2 WHERE name = $3")
                .bind(change.at)
                .bind(change.author)
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
        if !exists {
            return Ok(false);
        }
        for id in host_ids {
            if grant {
                insert_grant(&mut tx, name, *id, change).await?;
            } else {
                sqlx::query("DELETE FROM secret_grants WHERE secret = $1 AND host_id = $2")
                    .bind(name)
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        for tag in tags {
            let query = if grant {
                sqlx::query("INSERT INTO secret_tag_grants (secret, tag, granted_at, granted_by) VALUES ($1, $2, $3, $4) ON CONFLICT (secret, tag) DO NOTHING")
                    .bind(name)
                    .bind(tag)
                    .bind(change.at)
                    .bind(change.author)
            } else {
                sqlx::query("DELETE FROM secret_tag_grants WHERE secret = $1 AND tag = $2")
                    .bind(name)
                    .bind(tag)
            };
            query.execute(&mut *tx).await?;
        }
        // A revoked host that carries a tag the secret is granted to keeps it, by the tag.
        sync_tag_grants(&mut tx, change.at).await?;
        self.record_change(&mut tx, name, change).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Removes a secret and its grants, recording the change; false when there was none.
    pub async fn delete_secret(&self, name: &str, change: &Change<'_>) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let deleted = sqlx::query("DELETE FROM secrets WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            > 0;
        if deleted {
            for table in ["secret_grants", "secret_tag_grants"] {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DELETE FROM {table} WHERE secret = $1"
                )))
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
            self.record_change(&mut tx, name, change).await?;
            tx.commit().await?;
        }
        Ok(deleted)
    }

    pub async fn list_secrets(&self) -> Result<Vec<SecretRow>, StoreError> {
        Ok(sqlx::query_as::<_, SecretRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {SECRET_COLUMNS} FROM secrets ORDER BY name"
        )))
        .fetch_all(&self.reader)
        .await?)
    }

    pub async fn secret_by_name(&self, name: &str) -> Result<Option<SecretRow>, StoreError> {
        Ok(sqlx::query_as::<_, SecretRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {SECRET_COLUMNS} FROM secrets WHERE name = $1"
        )))
        .bind(name)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// A secret's current ciphertext, if it exists.
    pub async fn secret_ciphertext(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT ciphertext FROM secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.reader)
                .await?,
        )
    }

    /// Every grant, with host names, ordered by secret and host.
    pub async fn list_grants(&self) -> Result<Vec<GrantRow>, StoreError> {
        Ok(sqlx::query_as::<_, GrantRow>(
            "SELECT g.secret, g.host_id, h.name AS host, g.granted_at, g.granted_by, g.fetched_version, g.fetched_at, g.via_tag
             FROM secret_grants g JOIN hosts h ON h.id = g.host_id ORDER BY g.secret, h.name",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// The newest `per_secret` changes of every secret (also removed ones), newest first.
    pub async fn list_secret_changes(&self, per_secret: i64) -> Result<Vec<ChangeRow>, StoreError> {
        Ok(sqlx::query_as::<_, ChangeRow>(
            "SELECT c.secret, c.at, c.author, c.action, c.detail FROM secret_changes c
             WHERE c.id IN (SELECT d.id FROM secret_changes d WHERE d.secret = c.secret ORDER BY d.id DESC LIMIT $1)
             ORDER BY c.secret, c.id DESC",
        )
        .bind(per_secret)
        .fetch_all(&self.reader)
        .await?)
    }

    /// (host id, secret name, version) of every grant: what the check-in digests are made of.
    pub async fn granted_versions(&self) -> Result<Vec<(i64, String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT g.host_id, s.name, s.version FROM secret_grants g JOIN secrets s ON s.name = g.secret",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("host_id")?,
                    r.try_get("name")?,
                    r.try_get("version")?,
                ))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    /// The ciphertexts and versions of those of `names` that are granted to `host_id`.
    pub async fn granted_ciphertexts(
        &self,
        host_id: i64,
        names: &[String],
    ) -> Result<Vec<(String, i64, Vec<u8>)>, StoreError> {
        // One query for the host's grants; the names are matched here, so that the SQL
        // never grows with the request.
        let rows = sqlx::query(
            "SELECT s.name, s.version, s.ciphertext FROM secret_grants g JOIN secrets s ON s.name = g.secret WHERE g.host_id = $1",
        )
        .bind(host_id)
        .fetch_all(&self.reader)
        .await?;
        let wanted: std::collections::HashSet<&str> = names.iter().map(String::as_str).collect();
        let mut out = Vec::new();
        for r in rows {
            let name: String = r.try_get("name")?;
            if wanted.contains(name.as_str()) {
                out.push((name, r.try_get("version")?, r.try_get("ciphertext")?));
            }
        }
        Ok(out)
    }

    /// Notes which versions a host fetched.
    pub async fn record_fetched(
        &self,
        host_id: i64,
        fetched: &[(String, i64)],
        at: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for (name, version) in fetched {
            sqlx::query("UPDATE secret_grants SET fetched_version = $1, fetched_at = $2 WHERE secret = $3 AND host_id = $4")
                .bind(*version)
                .bind(at)
                .bind(name)
                .bind(host_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

async fn insert_grant(
    tx: &mut Tx<'_>,
    name: &str,
    host_id: i64,
    change: &Change<'_>,
) -> Result<(), StoreError> {
    // A direct grant of a secret the host holds through a tag makes it direct: it stays
    // when the host loses the tag.
    sqlx::query("INSERT INTO secret_grants (secret, host_id, granted_at, granted_by) VALUES ($1, $2, $3, $4) ON CONFLICT (secret, host_id) DO UPDATE SET via_tag = ''")
        .bind(name)
        .bind(host_id)
        .bind(change.at)
        .bind(change.author)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Brings the grants that tags give in line with the tag grants and the hosts' current
/// tags, within the caller's transaction: grants no tag justifies any more go, grants a tag
/// now gives arrive (a direct grant stays as it is). Tags are matched as whole words of the
/// space-separated `hosts.tags`, with `_` escaped (it is a LIKE wildcard and a tag letter).
pub(super) async fn sync_tag_grants(tx: &mut Tx<'_>, now: i64) -> Result<(), StoreError> {
    const HOLDS: &str =
        "(' ' || h.tags || ' ') LIKE ('% ' || replace(t.tag, '_', '\\_') || ' %') ESCAPE '\\'";
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM secret_grants WHERE via_tag <> '' AND NOT EXISTS (
           SELECT 1 FROM secret_tag_grants t, hosts h
           WHERE h.id = secret_grants.host_id AND t.secret = secret_grants.secret AND {HOLDS})"
    )))
    .execute(&mut **tx)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO secret_grants (secret, host_id, granted_at, granted_by, via_tag)
         SELECT t.secret, h.id, $1, MIN(t.granted_by), MIN(t.tag)
         FROM secret_tag_grants t JOIN hosts h ON {HOLDS}
         GROUP BY t.secret, h.id
         ON CONFLICT (secret, host_id) DO NOTHING"
    )))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Every secret's tag grants, by secret and tag.
    pub async fn list_tag_grants(&self) -> Result<Vec<TagGrantRow>, StoreError> {
        Ok(sqlx::query_as::<_, TagGrantRow>(
            "SELECT secret, tag, granted_at, granted_by FROM secret_tag_grants ORDER BY secret, tag",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// A server-wide setting, if recorded.
    pub async fn setting(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|r| r.try_get("value")).transpose()?)
    }

    /// Records `value` unless the setting exists; returns what is recorded (the first
    /// writer wins, also between replicas starting at once).
    pub async fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, StoreError> {
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(&self.writer)
        .await?;
        Ok(self
            .setting(name)
            .await?
            .unwrap_or_else(|| value.to_owned()))
    }
}
