//! The `registrations` and `rejected_keys` tables: hosts waiting for approval, and keys an
//! admin turned away for good.

use sqlx::{AssertSqlSafe, Row};

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RegistrationRow {
    pub key_id: String,
    pub public_key: String,
    pub hostname_hint: String,
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    pub code: String,
    pub code_expires_at: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The network it registered from (see `service::enrollment::source_of`).
    pub source: String,
    /// The tags the host suggests for itself, validated (as `join_tags` stores them).
    pub suggested_tags: String,
}

pub(super) const REGISTRATION_COLUMNS: &str = "key_id, public_key, hostname_hint, os, arch, agent_version, code, code_expires_at, first_seen_ms, last_seen_ms, source, suggested_tags";

impl Store {
    pub async fn registration_by_key(
        &self,
        key_id: &str,
    ) -> Result<Option<RegistrationRow>, StoreError> {
        Ok(sqlx::query_as::<_, RegistrationRow>(AssertSqlSafe(format!(
            "SELECT {REGISTRATION_COLUMNS} FROM registrations WHERE key_id = $1"
        )))
        .bind(key_id)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub async fn registration_by_code(
        &self,
        code: &str,
    ) -> Result<Option<RegistrationRow>, StoreError> {
        Ok(sqlx::query_as::<_, RegistrationRow>(AssertSqlSafe(format!("SELECT {REGISTRATION_COLUMNS} FROM registrations WHERE code = $1 ORDER BY code_expires_at DESC")))
            .bind(code)
            .fetch_optional(&self.reader)
            .await?)
    }

    pub async fn list_registrations(&self) -> Result<Vec<RegistrationRow>, StoreError> {
        Ok(sqlx::query_as::<_, RegistrationRow>(AssertSqlSafe(format!(
            "SELECT {REGISTRATION_COLUMNS} FROM registrations ORDER BY first_seen_ms"
        )))
        .fetch_all(&self.reader)
        .await?)
    }

    /// Inserts or refreshes a registration (one row per key).
    pub async fn upsert_registration(&self, r: &RegistrationRow) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO registrations (key_id, public_key, hostname_hint, os, arch, agent_version, code, code_expires_at, first_seen_ms, last_seen_ms, source, suggested_tags)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (key_id) DO UPDATE SET hostname_hint = $3, os = $4, arch = $5, agent_version = $6, code = $7, code_expires_at = $8, last_seen_ms = $10, source = $11, suggested_tags = $12",
        )
        .bind(&r.key_id)
        .bind(&r.public_key)
        .bind(&r.hostname_hint)
        .bind(&r.os)
        .bind(&r.arch)
        .bind(&r.agent_version)
        .bind(&r.code)
        .bind(r.code_expires_at)
        .bind(r.first_seen_ms)
        .bind(r.last_seen_ms)
        .bind(&r.source)
        .bind(&r.suggested_tags)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn count_registrations(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM registrations")
            .fetch_one(&self.reader)
            .await?
            .try_get("n")?)
    }

    /// Removes one registration to make room: from the network (`source`) that holds the
    /// most pending keys, the one seen least recently there. A host waiting alone on its
    /// network is never evicted while a flooder holds more; among networks of equal size
    /// the one that arrived last loses, so hosts already waiting keep their codes.
    pub async fn evict_one_registration(&self) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM registrations WHERE key_id IN (
               SELECT key_id FROM registrations WHERE source = (
                 SELECT source FROM registrations GROUP BY source
                 ORDER BY COUNT(*) DESC, MAX(first_seen_ms) DESC LIMIT 1)
               ORDER BY last_seen_ms, first_seen_ms DESC LIMIT 1)",
        )
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected())
    }

    /// Rejects a pending registration for good: the key may not register again.
    pub async fn reject_registration(
        &self,
        key_id: &str,
        by: &str,
        now: i64,
        audit: &super::AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query("DELETE FROM registrations WHERE key_id = $1")
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        sqlx::query("INSERT INTO rejected_keys (key_id, rejected_at, rejected_by) VALUES ($1, $2, $3) ON CONFLICT (key_id) DO NOTHING")
            .bind(key_id)
            .bind(now)
            .bind(by)
            .execute(&mut *tx)
            .await?;
        self.append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn is_rejected(&self, key_id: &str) -> Result<bool, StoreError> {
        Ok(
            sqlx::query("SELECT key_id FROM rejected_keys WHERE key_id = $1")
                .bind(key_id)
                .fetch_optional(&self.reader)
                .await?
                .is_some(),
        )
    }
}
