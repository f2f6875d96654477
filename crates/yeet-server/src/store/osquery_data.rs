//! What osquery nodes send: log lines (`osquery_logs`), distributed query campaigns and
//! their per-node results (`osquery_campaigns`, `osquery_targets`), and file carves
//! (`osquery_carves`, `osquery_carve_blocks`).

use sqlx::Row;

use super::{Store, StoreError, conflict, id_list};

/// A log line about to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewLogLine {
    pub node_id: i64,
    pub kind: &'static str,
    pub name: String,
    pub logged_at: i64,
    pub line: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct LogRow {
    pub id: i64,
    pub node_id: i64,
    pub kind: String,
    pub name: String,
    pub logged_at: i64,
    pub received_at: i64,
    pub line: String,
}

/// Which log lines to list; every filter is optional.
#[derive(Debug, Clone, Default)]
pub struct LogQuery {
    pub node_ids: Option<Vec<i64>>,
    pub name: Option<String>,
    pub kind: Option<String>,
    pub since: Option<i64>,
    pub after_id: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CampaignRow {
    pub id: i64,
    pub query: String,
    pub kind: String,
    pub created_at: i64,
    pub created_by: String,
    pub deadline: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TargetRow {
    pub campaign_id: i64,
    pub node_id: i64,
    pub sent_at: Option<i64>,
    pub answered_at: Option<i64>,
    pub status: Option<i64>,
    pub message: Option<String>,
    /// JSON array of row objects.
    pub rows: Option<String>,
}

/// A node's answer to one campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetAnswer {
    pub campaign_id: i64,
    pub status: i64,
    pub message: Option<String>,
    pub rows: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CarveRow {
    pub id: i64,
    pub session_id: String,
    pub node_id: i64,
    pub campaign_id: Option<i64>,
    pub request_id: String,
    pub carve_id: String,
    pub block_count: i64,
    pub block_size: i64,
    pub carve_size: i64,
    pub started_at: i64,
    pub completed_at: Option<i64>,
    pub sha256: Option<String>,
}

const LOG_COLUMNS: &str = "id, node_id, kind, name, logged_at, received_at, line";
const CAMPAIGN_COLUMNS: &str = "id, query, kind, created_at, created_by, deadline";
const TARGET_COLUMNS: &str = "campaign_id, node_id, sent_at, answered_at, status, message, rows";
const CARVE_COLUMNS: &str = "id, session_id, node_id, campaign_id, request_id, carve_id, block_count, block_size, carve_size, started_at, completed_at, sha256";

impl Store {
    /// Stores a batch of log lines in one transaction, unless it would take a node's stored
    /// log bytes past `max_stored_per_node`: then nothing is stored, the node's refusal is
    /// counted, and the answer is the node that is over budget.
    pub async fn insert_log_lines(
        &self,
        lines: &[NewLogLine],
        received_at: i64,
        max_stored_per_node: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut per_node: std::collections::BTreeMap<i64, i64> = Default::default();
        for l in lines {
            *per_node.entry(l.node_id).or_default() += l.line.len() as i64;
        }
        let mut tx = self.writer.begin().await?;
        for (node_id, bytes) in &per_node {
            let fits = sqlx::query(
                "UPDATE osquery_nodes SET log_bytes = log_bytes + $1 WHERE id = $2 AND log_bytes + $1 <= $3",
            )
            .bind(*bytes)
            .bind(*node_id)
            .bind(max_stored_per_node)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                > 0;
            if !fits {
                tx.rollback().await?;
                sqlx::query("UPDATE osquery_nodes SET log_refusals = log_refusals + 1, last_log_refused_at = $1 WHERE id = $2")
                    .bind(received_at)
                    .bind(*node_id)
                    .execute(&self.writer)
                    .await?;
                return Ok(Some(*node_id));
            }
        }
        for l in lines {
            sqlx::query(
                "INSERT INTO osquery_logs (node_id, kind, name, logged_at, received_at, line, bytes) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(l.node_id)
            .bind(l.kind)
            .bind(&l.name)
            .bind(l.logged_at)
            .bind(received_at)
            .bind(&l.line)
            .bind(l.line.len() as i64)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(None)
    }

    /// Counts a batch refused for the node's log rate.
    pub async fn count_log_refusal(&self, node_id: i64, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE osquery_nodes SET log_refusals = log_refusals + 1, last_log_refused_at = $1 WHERE id = $2")
            .bind(at)
            .bind(node_id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Log lines matching `q`, oldest first, as many as fit in `max_bytes` of line text (at
    /// least one), and whether more may follow. Sizes are read first, so that lines past
    /// the budget are never loaded.
    pub async fn list_log_lines(
        &self,
        q: &LogQuery,
        max_bytes: i64,
    ) -> Result<(Vec<LogRow>, bool), StoreError> {
        // The filters are constant SQL fragments; only their values are bound.
        let mut sql = "SELECT id, bytes FROM osquery_logs WHERE id > $1".to_owned();
        let mut n = 1;
        let mut next = |sql: &mut String, fragment: &str| {
            n += 1;
            sql.push_str(&fragment.replace('?', &format!("${n}")));
        };
        if q.name.is_some() {
            next(&mut sql, " AND name = ?");
        }
        if q.kind.is_some() {
            next(&mut sql, " AND kind = ?");
        }
        if q.since.is_some() {
            next(&mut sql, " AND received_at >= ?");
        }
        if let Some(ids) = &q.node_ids {
            sql.push_str(&format!(" AND node_id IN ({})", id_list(ids)));
        }
        next(&mut sql, " ORDER BY id LIMIT ?");
        let mut query =
            sqlx::query_as::<_, (i64, i64)>(sqlx::AssertSqlSafe(sql)).bind(q.after_id.unwrap_or(0));
        if let Some(name) = &q.name {
            query = query.bind(name);
        }
        if let Some(kind) = &q.kind {
            query = query.bind(kind);
        }
        if let Some(since) = q.since {
            query = query.bind(since);
        }
        let sizes = query.bind(q.limit).fetch_all(&self.reader).await?;
        let mut taken = Vec::new();
        let mut total = 0i64;
        for (id, bytes) in &sizes {
            if !taken.is_empty() && total.saturating_add(*bytes) > max_bytes {
                break;
            }
            total = total.saturating_add(*bytes);
            taken.push(*id);
        }
        let more = taken.len() < sizes.len() || sizes.len() as i64 == q.limit;
        if taken.is_empty() {
            return Ok((Vec::new(), false));
        }
        let rows = sqlx::query_as::<_, LogRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {LOG_COLUMNS} FROM osquery_logs WHERE id IN ({}) ORDER BY id",
            id_list(&taken)
        )))
        .fetch_all(&self.reader)
        .await?;
        Ok((rows, more))
    }

    /// Drops log lines received before `before`, and takes their bytes off their nodes'
    /// stored totals; returns how many lines.
    pub async fn delete_log_lines_before(&self, before: i64) -> Result<u64, StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "UPDATE osquery_nodes SET log_bytes = log_bytes - (SELECT COALESCE(SUM(bytes), 0) FROM osquery_logs WHERE osquery_logs.node_id = osquery_nodes.id AND received_at < $1)
             WHERE id IN (SELECT DISTINCT node_id FROM osquery_logs WHERE received_at < $1)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query("DELETE FROM osquery_logs WHERE received_at < $1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Creates a campaign and its targets.
    pub async fn insert_campaign(
        &self,
        c: &CampaignRow,
        node_ids: &[i64],
        audit: &super::AuditEntry,
    ) -> Result<CampaignRow, StoreError> {
        let mut tx = self.writer.begin().await?;
        let row = sqlx::query_as::<_, CampaignRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO osquery_campaigns (query, kind, created_at, created_by, deadline) VALUES ($1, $2, $3, $4, $5) RETURNING {CAMPAIGN_COLUMNS}"
        )))
        .bind(&c.query)
        .bind(&c.kind)
        .bind(c.created_at)
        .bind(&c.created_by)
        .bind(c.deadline)
        .fetch_one(&mut *tx)
        .await?;
        for node_id in node_ids {
            sqlx::query("INSERT INTO osquery_targets (campaign_id, node_id) VALUES ($1, $2)")
                .bind(row.id)
                .bind(*node_id)
                .execute(&mut *tx)
                .await?;
        }
        let mut audit = audit.clone();
        if let Some(details) = audit.details.as_object_mut() {
            details.insert("campaign".into(), row.id.into());
        }
        self.append_audit(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(row)
    }

    pub async fn campaign_by_id(&self, id: i64) -> Result<Option<CampaignRow>, StoreError> {
        Ok(
            sqlx::query_as::<_, CampaignRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {CAMPAIGN_COLUMNS} FROM osquery_campaigns WHERE id = $1"
            )))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?,
        )
    }

    /// The latest deadline of any campaign (0 when none): reads skip the database while it
    /// has passed.
    pub async fn latest_campaign_deadline(&self) -> Result<i64, StoreError> {
        let latest: Option<i64> = sqlx::query_scalar("SELECT MAX(deadline) FROM osquery_campaigns")
            .fetch_one(&self.reader)
            .await?;
        Ok(latest.unwrap_or(0))
    }

    pub async fn campaign_targets(&self, campaign_id: i64) -> Result<Vec<TargetRow>, StoreError> {
        Ok(sqlx::query_as::<_, TargetRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {TARGET_COLUMNS} FROM osquery_targets WHERE campaign_id = $1 ORDER BY node_id"
        )))
        .bind(campaign_id)
        .fetch_all(&self.reader)
        .await?)
    }

    /// The open campaigns this node has not been sent yet, marked sent: (id, query).
    pub async fn take_unsent_queries(
        &self,
        node_id: i64,
        now: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query(
            "UPDATE osquery_targets SET sent_at = $2 WHERE node_id = $1 AND sent_at IS NULL \
             AND campaign_id IN (SELECT id FROM osquery_campaigns WHERE deadline > $2) RETURNING campaign_id",
        )
        .bind(node_id)
        .bind(now)
        .fetch_all(&self.writer)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get("campaign_id")?;
            if let Some(c) = self.campaign_by_id(id).await? {
                out.push((id, c.query));
            }
        }
        Ok(out)
    }

    /// Stores a node's answers to campaigns it was sent and has not answered; answers to
    /// anything else are ignored. Returns the campaigns whose answers were stored.
    pub async fn record_answers(
        &self,
        node_id: i64,
        answers: &[TargetAnswer],
        now: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let mut tx = self.writer.begin().await?;
        let mut stored = Vec::new();
        for a in answers {
            let done = sqlx::query(
                "UPDATE osquery_targets SET answered_at = $3, status = $4, message = $5, rows = $6 \
                 WHERE campaign_id = $1 AND node_id = $2 AND sent_at IS NOT NULL AND answered_at IS NULL",
            )
            .bind(a.campaign_id)
            .bind(node_id)
            .bind(now)
            .bind(a.status)
            .bind(&a.message)
            .bind(&a.rows)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() > 0 {
                stored.push(a.campaign_id);
            }
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// Starts a carve session; `Conflict` if the session id exists.
    pub async fn insert_carve(&self, c: &CarveRow) -> Result<CarveRow, StoreError> {
        sqlx::query_as::<_, CarveRow>(sqlx::AssertSqlSafe(format!(
            "INSERT INTO osquery_carves (session_id, node_id, campaign_id, request_id, carve_id, block_count, block_size, carve_size, started_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {CARVE_COLUMNS}"
        )))
        .bind(&c.session_id)
        .bind(c.node_id)
        .bind(c.campaign_id)
        .bind(&c.request_id)
        .bind(&c.carve_id)
        .bind(c.block_count)
        .bind(c.block_size)
        .bind(c.carve_size)
        .bind(c.started_at)
        .fetch_one(&self.writer)
        .await
        .map_err(conflict("a carve session with that id"))
    }

    pub async fn carve_by_session(&self, session_id: &str) -> Result<Option<CarveRow>, StoreError> {
        Ok(sqlx::query_as::<_, CarveRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {CARVE_COLUMNS} FROM osquery_carves WHERE session_id = $1"
        )))
        .bind(session_id)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub async fn carve_by_id(&self, id: i64) -> Result<Option<CarveRow>, StoreError> {
        Ok(sqlx::query_as::<_, CarveRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {CARVE_COLUMNS} FROM osquery_carves WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub async fn list_carves(&self) -> Result<Vec<(CarveRow, i64)>, StoreError> {
        let carves = sqlx::query_as::<_, CarveRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {CARVE_COLUMNS} FROM osquery_carves ORDER BY id"
        )))
        .fetch_all(&self.reader)
        .await?;
        let mut out = Vec::with_capacity(carves.len());
        for c in carves {
            let received = self.carve_blocks_received(c.id).await?;
            out.push((c, received));
        }
        Ok(out)
    }

    /// Open (incomplete) carve sessions of a node.
    pub async fn open_carves_of(&self, node_id: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM osquery_carves WHERE node_id = $1 AND completed_at IS NULL",
        )
        .bind(node_id)
        .fetch_one(&self.reader)
        .await?)
    }

    /// Stores a block unless one with that id is stored already (a retry); true when new.
    pub async fn insert_carve_block(
        &self,
        carve_id: i64,
        block_id: i64,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO osquery_carve_blocks (carve_id, block_id, data) VALUES ($1, $2, $3) ON CONFLICT (carve_id, block_id) DO NOTHING",
        )
        .bind(carve_id)
        .bind(block_id)
        .bind(data)
        .execute(&self.writer)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn carve_blocks_received(&self, carve_id: i64) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM osquery_carve_blocks WHERE carve_id = $1")
                .bind(carve_id)
                .fetch_one(&self.reader)
                .await?,
        )
    }

    /// One block's bytes.
    pub async fn carve_block(
        &self,
        carve_id: i64,
        block_id: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT data FROM osquery_carve_blocks WHERE carve_id = $1 AND block_id = $2",
        )
        .bind(carve_id)
        .bind(block_id)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// Marks a carve complete with the archive's checksum (once: a concurrent finisher
    /// computed the same).
    pub async fn complete_carve(&self, id: i64, sha256: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE osquery_carves SET completed_at = $1, sha256 = $2 WHERE id = $3 AND completed_at IS NULL")
            .bind(at)
            .bind(sha256)
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(())
    }
}
