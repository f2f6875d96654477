//! The `request_nonces` table: accepted request nonces, shared by replicas and kept across restarts.

use sqlx::{AssertSqlSafe, Row};

use super::{Store, StoreError};

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

    /// Forgets the nonces of requests signed before `signed_before`, which can no longer
    /// pass the skew check.
    pub async fn delete_expired_nonces(&self, signed_before: i64) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM request_nonces WHERE signed_at < $1")
                .bind(signed_before)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
