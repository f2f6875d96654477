//! The `osquery_nodes`, `osquery_queries` and `osquery_options` tables: enrolled osquery
//! nodes (by the hash of their node key), and the schedule and options operators manage.

use super::{Store, StoreError, conflict};

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct NodeRow {
    pub id: i64,
    pub host_identifier: String,
    pub host_id: Option<i64>,
    pub hostname: String,
    pub hardware_uuid: String,
    pub platform: String,
    pub os_name: String,
    pub osquery_version: String,
    pub enrolled_at: i64,
    pub enrollments: i64,
    pub last_seen: i64,
    pub takeovers_refused: i64,
    pub last_refused_at: Option<i64>,
    pub log_bytes: i64,
    pub log_refusals: i64,
    pub last_log_refused_at: Option<i64>,
}

/// What became of an enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// A node not seen before.
    New(NodeRow),
    /// A new key for the node of that identifier, whose old key had gone quiet. It keeps its
    /// link to a yeet host only when it reported the same hardware UUID as before.
    Again {
        node: NodeRow,
        old_key_hash: String,
        kept_link: bool,
    },
    /// Refused: the node of that identifier checked in at `last_seen`, too recently to be
    /// replaced; its key stays valid.
    Refused { last_seen: i64 },
}

/// What an enrollment records about the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEnrollment {
    pub host_identifier: String,
    pub node_key_hash: String,
    pub hostname: String,
    pub hardware_uuid: String,
    pub platform: String,
    pub os_name: String,
    pub osquery_version: String,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ScheduledQueryRow {
    pub name: String,
    pub pack: String,
    pub query: String,
    pub interval_secs: i64,
    pub snapshot: i64,
    pub platform: String,
    /// JSON array of host names or node identifiers; empty for every node.
    pub hosts: String,
    pub created_at: i64,
    pub created_by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct OptionRow {
    pub name: String,
    /// JSON.
    pub value: String,
    pub updated_at: i64,
    pub updated_by: String,
}

const NODE_COLUMNS: &str = "id, host_identifier, host_id, hostname, hardware_uuid, platform, os_name, osquery_version, enrolled_at, enrollments, last_seen, takeovers_refused, last_refused_at, log_bytes, log_refusals, last_log_refused_at";
const QUERY_COLUMNS: &str =
    "name, pack, query, interval_secs, snapshot, platform, hosts, created_at, created_by";

impl Store {
    /// Records an enrollment: a new node, or a new key for the node of that identifier when
    /// its old key has been quiet for `quiet_secs` (otherwise the attempt is counted and
    /// refused). One transaction, so that two enrollments under one identifier are decided
    /// one after the other.
    pub async fn enroll_node(
        &self,
        e: &NodeEnrollment,
        quiet_secs: i64,
    ) -> Result<Enrolled, StoreError> {
        let mut tx = self.writer.begin().await?;
        let old: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT node_key_hash, last_seen, hardware_uuid FROM osquery_nodes WHERE host_identifier = $1",
        )
        .bind(&e.host_identifier)
        .fetch_optional(&mut *tx)
        .await?;
        let (sql, kept_link) = match &old {
            Some((_, last_seen, _)) if e.at.saturating_sub(*last_seen) < quiet_secs => {
                sqlx::query("UPDATE osquery_nodes SET takeovers_refused = takeovers_refused + 1, last_refused_at = $2 WHERE host_identifier = $1")
                    .bind(&e.host_identifier)
                    .bind(e.at)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(Enrolled::Refused {
                    last_seen: *last_seen,
                });
            }
            Some((_, _, uuid)) => {
                let same_machine = !uuid.is_empty() && *uuid == e.hardware_uuid;
                (
                    format!(
                        "UPDATE osquery_nodes SET node_key_hash = $2, hostname = $3, hardware_uuid = $4, platform = $5, os_name = $6, osquery_version = $7, enrolled_at = $8, last_seen = $8, enrollments = enrollments + 1,
                            host_id = CASE WHEN $9 = 1 THEN host_id ELSE NULL END
                         WHERE host_identifier = $1 RETURNING {NODE_COLUMNS}"
                    ),
                    same_machine,
                )
            }
            None => (
                format!(
                    "INSERT INTO osquery_nodes (host_identifier, node_key_hash, hostname, hardware_uuid, platform, os_name, osquery_version, enrolled_at, last_seen) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {NODE_COLUMNS}"
                ),
                false,
            ),
        };
        let mut query = sqlx::query_as::<_, NodeRow>(sqlx::AssertSqlSafe(sql))
            .bind(&e.host_identifier)
            .bind(&e.node_key_hash)
            .bind(&e.hostname)
            .bind(&e.hardware_uuid)
            .bind(&e.platform)
            .bind(&e.os_name)
            .bind(&e.osquery_version)
            .bind(e.at);
        if old.is_some() {
            query = query.bind(i64::from(kept_link));
        }
        let node = query
            .fetch_one(&mut *tx)
            .await
            .map_err(conflict("an osquery node with that identifier"))?;
        tx.commit().await?;
        Ok(match old {
            Some((old_key_hash, _, _)) => Enrolled::Again {
                node,
                old_key_hash,
                kept_link,
            },
            None => Enrolled::New(node),
        })
    }

    /// Links a node to a yeet host unless another node is linked to it already (the unique
    /// index decides, also across replicas); true when linked.
    pub async fn link_node(&self, node_id: i64, host_id: i64) -> Result<bool, StoreError> {
        match sqlx::query("UPDATE osquery_nodes SET host_id = $1 WHERE id = $2")
            .bind(host_id)
            .bind(node_id)
            .execute(&self.writer)
            .await
        {
            Ok(done) => Ok(done.rows_affected() > 0),
            Err(e) if StoreError::is_unique_violation(&e) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn node_by_key_hash(&self, hash: &str) -> Result<Option<NodeRow>, StoreError> {
        Ok(sqlx::query_as::<_, NodeRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM osquery_nodes WHERE node_key_hash = $1"
        )))
        .bind(hash)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub async fn node_by_id(&self, id: i64) -> Result<Option<NodeRow>, StoreError> {
        Ok(sqlx::query_as::<_, NodeRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM osquery_nodes WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.reader)
        .await?)
    }

    pub async fn list_nodes(&self) -> Result<Vec<NodeRow>, StoreError> {
        Ok(sqlx::query_as::<_, NodeRow>(sqlx::AssertSqlSafe(format!(
            "SELECT {NODE_COLUMNS} FROM osquery_nodes ORDER BY host_identifier"
        )))
        .fetch_all(&self.reader)
        .await?)
    }

    /// Writes batched last-seen times of nodes.
    pub async fn touch_nodes(&self, seen: &[(i64, i64)]) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        for (id, at) in seen {
            sqlx::query("UPDATE osquery_nodes SET last_seen = $1 WHERE id = $2 AND last_seen < $1")
                .bind(*at)
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_scheduled_queries(&self) -> Result<Vec<ScheduledQueryRow>, StoreError> {
        Ok(
            sqlx::query_as::<_, ScheduledQueryRow>(sqlx::AssertSqlSafe(format!(
                "SELECT {QUERY_COLUMNS} FROM osquery_queries ORDER BY pack, name"
            )))
            .fetch_all(&self.reader)
            .await?,
        )
    }

    /// Adds a scheduled query; `Conflict` when the name is taken.
    pub async fn insert_scheduled_query(
        &self,
        q: &ScheduledQueryRow,
        audit: &super::AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO osquery_queries ({QUERY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        )))
        .bind(&q.name)
        .bind(&q.pack)
        .bind(&q.query)
        .bind(q.interval_secs)
        .bind(q.snapshot)
        .bind(&q.platform)
        .bind(&q.hosts)
        .bind(q.created_at)
        .bind(&q.created_by)
        .execute(&mut *tx)
        .await
        .map_err(conflict("a scheduled query of that name"))?;
        self.append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a scheduled query; false when there was none.
    pub async fn delete_scheduled_query(
        &self,
        name: &str,
        audit: &super::AuditEntry,
    ) -> Result<bool, StoreError> {
        self.delete_audited("DELETE FROM osquery_queries WHERE name = $1", name, audit)
            .await
    }

    /// Runs a `DELETE` of one row by name and, when it deleted one, appends `audit` in the
    /// same transaction; false when there was none.
    async fn delete_audited(
        &self,
        sql: &'static str,
        name: &str,
        audit: &super::AuditEntry,
    ) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        let done = sqlx::query(sql).bind(name).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        self.append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn list_osquery_options(&self) -> Result<Vec<OptionRow>, StoreError> {
        Ok(sqlx::query_as::<_, OptionRow>(
            "SELECT name, value, updated_at, updated_by FROM osquery_options ORDER BY name",
        )
        .fetch_all(&self.reader)
        .await?)
    }

    /// Sets an option (insert or replace).
    pub async fn set_osquery_option(
        &self,
        o: &OptionRow,
        audit: &super::AuditEntry,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO osquery_options (name, value, updated_at, updated_by) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        )
        .bind(&o.name)
        .bind(&o.value)
        .bind(o.updated_at)
        .bind(&o.updated_by)
        .execute(&mut *tx)
        .await?;
        self.append_audit(&mut tx, audit).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes an option; false when it was not set.
    pub async fn delete_osquery_option(
        &self,
        name: &str,
        audit: &super::AuditEntry,
    ) -> Result<bool, StoreError> {
        self.delete_audited("DELETE FROM osquery_options WHERE name = $1", name, audit)
            .await
    }
}
