//! The `detachments` table and the hosts' detach policy: when a host ran a locally chosen
//! system with the server's permission, who asked, why, and who ended it.

use super::{AuditEntry, Store, StoreError, conflict};
use yeet_proto::api::{HostPolicyChange, RebootPolicy};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DetachmentRow {
    pub host_id: i64,
    pub since: i64,
    pub requested_by: String,
    pub reason: String,
}

/// A detachment with how it ended, if it did.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct EndedDetachment {
    pub host_id: i64,
    pub since: i64,
    pub requested_by: String,
    pub reason: String,
    pub ended_at: Option<i64>,
    pub ended_by: Option<String>,
}

const DETACHMENT_COLUMNS: &str = "host_id, since, requested_by, reason";

impl Store {
    /// Sets what the host may do on its own (the fields given; the others are kept);
    /// false when there is no such host.
    pub async fn set_host_policy(
        &self,
        host_id: i64,
        change: &HostPolicyChange,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE hosts SET allow_detach = COALESCE($1, allow_detach),
                 reboot_policy = COALESCE($2, reboot_policy)
             WHERE id = $3",
        )
        .bind(change.allow_detach.map(i64::from))
        .bind(change.reboot.map(RebootPolicy::as_str))
        .bind(host_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Every open detachment.
    pub async fn open_detachments(&self) -> Result<Vec<DetachmentRow>, StoreError> {
        Ok(
            sqlx::query_as::<_, DetachmentRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {DETACHMENT_COLUMNS} FROM detachments WHERE ended_at IS NULL"
            )))
            .fetch_all(&self.reader)
            .await?,
        )
    }

    /// The host's open detachment, if any.
    pub async fn open_detachment(&self, host_id: i64) -> Result<Option<DetachmentRow>, StoreError> {
        Ok(sqlx::query_as::<_, DetachmentRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {DETACHMENT_COLUMNS} FROM detachments WHERE host_id = $1 AND ended_at IS NULL"
        )))
        .bind(host_id)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// Every detachment, open or ended, oldest first.
    pub async fn list_detachments(&self) -> Result<Vec<EndedDetachment>, StoreError> {
        Ok(sqlx::query_as::<_, EndedDetachment>(
            "SELECT host_id, since, requested_by, reason, ended_at, ended_by FROM detachments ORDER BY id",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// Opens a detachment for the host, or returns the one already open (a retried
    /// request, or another replica that answered first: the unique index decides). The
    /// event is recorded either way: with the new detachment, or on its own.
    pub async fn start_detachment(
        &self,
        row: &DetachmentRow,
        audit: &AuditEntry,
    ) -> Result<DetachmentRow, StoreError> {
        let mut tx = self.writer.begin().await?;
        let inserted = sqlx::query_as::<_, DetachmentRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO detachments (host_id, since, requested_by, reason) VALUES ($1, $2, $3, $4) RETURNING {DETACHMENT_COLUMNS}"
        )))
        .bind(row.host_id)
        .bind(row.since)
        .bind(&row.requested_by)
        .bind(&row.reason)
        .fetch_one(&mut *tx)
        .await
        .map_err(conflict("an open detachment"));
        match inserted {
            Ok(inserted) => {
                self.append_audit(&mut tx, audit).await?;
                tx.commit().await?;
                Ok(inserted)
            }
            Err(StoreError::Conflict(_)) => {
                drop(tx);
                let open = self
                    .open_detachment(row.host_id)
                    .await?
                    // Ended again between the two statements: the caller's request stands.
                    .ok_or(StoreError::Conflict("an open detachment"))?;
                self.record_audit(audit).await?;
                Ok(open)
            }
            Err(e) => Err(e),
        }
    }

    /// Ends the host's open detachment; false when it had none.
    pub async fn end_detachment(
        &self,
        host_id: i64,
        at: i64,
        by: &str,
        audit: &AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(
            "UPDATE detachments SET ended_at = $1, ended_by = $2 WHERE host_id = $3 AND ended_at IS NULL",
        )
        .bind(at)
        .bind(by)
        .bind(host_id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }
}
