//! The `activations` table: every activation attempt a host reported, with its log.

use sqlx::{AssertSqlSafe, FromRow, Row};

use yeet_proto::api::ActivationResult;

use super::{Store, StoreError, Wire};

/// One activation attempt; `log_gzip` is loaded only when asked for.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ActivationRow {
    pub id: i64,
    pub host_id: i64,
    /// The host's name when it reported (history survives renames and removals).
    pub host_name: String,
    pub store_path: String,
    pub release_id: Option<i64>,
    pub result: Wire<ActivationResult>,
    pub reason: String,
    pub started_at: i64,
    pub finished_at: i64,
    /// 0 or 1: the portable boolean of both backends.
    pub reboot_required: i64,
}

pub(super) const ACTIVATION_COLUMNS: &str = "id, host_id, host_name, store_path, release_id, result, reason, started_at, finished_at, reboot_required";

impl Store {
    /// Records an activation and the host's newest result together.
    pub async fn record_activation(
        &self,
        a: &ActivationRow,
        log_gzip: &[u8],
    ) -> Result<i64, StoreError> {
        let mut tx = self.writer.begin().await?;
        let id: i64 = sqlx::query(
            "INSERT INTO activations (host_id, host_name, store_path, release_id, result, reason, started_at, finished_at, reboot_required, log_gzip, reported_at_ms)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
        )
        .bind(a.host_id)
        .bind(&a.host_name)
        .bind(&a.store_path)
        .bind(a.release_id)
        .bind(a.result.0.as_str())
        .bind(&a.reason)
        .bind(a.started_at)
        .bind(a.finished_at)
        .bind(a.reboot_required)
        .bind(log_gzip)
        // The server's clock: rollouts count only results reported after they gave the
        // host its system, whatever the host's clock says.
        .bind(yeet_proto::clock::unix_now_ms())
        .fetch_one(&mut *tx)
        .await?
        .try_get("id")?;
        sqlx::query("UPDATE hosts SET last_result = $1, last_result_path = $2 WHERE id = $3")
            .bind(a.result.0.as_str())
            .bind(&a.store_path)
            .bind(a.host_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// A host's activations, newest first.
    pub async fn list_activations(
        &self,
        host_id: i64,
        limit: i64,
    ) -> Result<Vec<ActivationRow>, StoreError> {
        Ok(sqlx::query_as::<_, ActivationRow>(AssertSqlSafe(format!("SELECT {ACTIVATION_COLUMNS} FROM activations WHERE host_id = $1 ORDER BY id DESC LIMIT $2")))
            .bind(host_id)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?)
    }

    /// A host's newest activation with its compressed log.
    pub async fn latest_activation_log(
        &self,
        host_id: i64,
    ) -> Result<Option<(ActivationRow, Vec<u8>)>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {ACTIVATION_COLUMNS}, log_gzip FROM activations WHERE host_id = $1 ORDER BY id DESC LIMIT 1")))
            .bind(host_id)
            .fetch_optional(&self.reader)
            .await?;
        Ok(match row {
            Some(r) => Some((ActivationRow::from_row(&r)?, r.try_get("log_gzip")?)),
            None => None,
        })
    }
}
