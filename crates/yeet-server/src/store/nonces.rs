//! The `request_nonces` table: accepted request nonces, shared by replicas and kept across restarts.

use sqlx::{AssertSqlSafe, Row};

use super::{Store, StoreError};

/// The setting holding the longest clock skew, in seconds, that any replica has started
/// with: nonces are kept that long after their request's signed time.
const NONCE_HORIZON: &str = "nonce_horizon_secs";

impl Store {
    /// Records a batch of (key id, nonce, signed time) in one statement and returns the ones
    /// that were new; the others were seen before (replays, possibly via another replica).
    ///
    /// Nonce rows are written without waiting for the disk (SQLite `synchronous=NORMAL`,
    /// PostgreSQL `synchronous_commit = off`, both on the log's own connection):
    /// after a crash of the whole machine the last fraction of a second of nonces may be
    /// lost, which reopens those requests to replay until their timestamps go stale (at most
    /// the skew window); the database itself stays consistent. Waiting for an fsync per
    /// batch would cut the check-in rate by more than half.
    pub async fn record_nonces(
        &self,
        batch: &[(String, String, i64)],
    ) -> Result<std::collections::HashSet<(String, String)>, StoreError> {
        if batch.is_empty() {
            return Ok(Default::default());
        }
        let values: Vec<String> = (0..batch.len())
            .map(|i| format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3))
            .collect();
        // Only placeholders are formatted in; every value is bound.
        let sql = format!(
            "INSERT INTO request_nonces (key_id, nonce, signed_at) VALUES {} ON CONFLICT DO NOTHING RETURNING key_id, nonce",
            values.join(", ")
        );
        let mut query = sqlx::query(AssertSqlSafe(sql));
        for (key, nonce, signed_at) in batch {
            query = query.bind(key).bind(nonce).bind(*signed_at);
        }
        let rows = query.fetch_all(&self.nonce_pool).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("key_id")?, r.try_get("nonce")?)))
            .collect()
    }

    /// Records that this replica accepts requests signed up to `skew_secs` from now, raising
    /// the fleet's nonce horizon (the longest skew any replica has started with) if it is
    /// longer. Called before the replica serves, so its accepted nonces outlive every
    /// replica's expiry. The horizon never shrinks by itself: a replica still running with
    /// the old, longer skew would accept replays of nonces expired by the shorter one.
    pub async fn announce_clock_skew(&self, skew_secs: i64) -> Result<(), StoreError> {
        // A corrupt value would fail the comparison below with a bare cast error.
        self.nonce_horizon().await?;
        sqlx::query(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE \
             SET value = excluded.value \
             WHERE CAST(settings.value AS BIGINT) < CAST(excluded.value AS BIGINT)",
        )
        .bind(NONCE_HORIZON)
        .bind(skew_secs.to_string())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Forgets the nonces of requests that no replica can accept any more: those signed
    /// more than the fleet's nonce horizon before `now`.
    pub async fn delete_expired_nonces(&self, now: i64) -> Result<u64, StoreError> {
        let Some((horizon, horizon_secs)) = self.nonce_horizon().await? else {
            // No replica has announced its skew: keep everything.
            return Ok(0);
        };
        // Deletes only while the horizon is still the one read. A replica that raised it
        // in between may already have accepted requests signed before the old horizon; it
        // raised it before accepting, so a statement that still sees the old value cannot
        // see those rows either.
        Ok(sqlx::query(
            "DELETE FROM request_nonces WHERE signed_at < $1 \
             AND EXISTS (SELECT 1 FROM settings WHERE name = $2 AND value = $3)",
        )
        .bind(now.saturating_sub(horizon_secs))
        .bind(NONCE_HORIZON)
        .bind(&horizon)
        .execute(&self.nonce_pool)
        .await?
        .rows_affected())
    }

    /// The fleet's nonce horizon as stored, and in seconds.
    async fn nonce_horizon(&self) -> Result<Option<(String, i64)>, StoreError> {
        let Some(stored) = self.setting(NONCE_HORIZON).await? else {
            return Ok(None);
        };
        match stored.parse() {
            Ok(secs) => Ok(Some((stored, secs))),
            Err(_) => Err(StoreError::CorruptSetting(NONCE_HORIZON, stored)),
        }
    }
}
