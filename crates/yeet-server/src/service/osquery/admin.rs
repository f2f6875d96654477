//! The operators' side of osquery: nodes, the schedule and options (served in every node's
//! config), stored logs, distributed queries (campaigns) and carves. Viewers read; only
//! admins change what nodes run, run SQL on them or download carved files.

use serde_json::value::RawValue;
use std::collections::HashMap;
use yeet_proto::ErrorCode;
use yeet_proto::api::Role;
use yeet_proto::osquery::{
    Campaign, CampaignTarget, CarveInfo, LogFilter, OsqueryLogLine, OsqueryLogPage, OsqueryNode,
    OsqueryOption, ScheduledQuery, StartCarve, StartQuery,
};

use super::EVENT_CAMPAIGN;
use crate::service::auth::{Scope, require_role, require_role_in_scope};
use crate::service::{Principal, Result, Service, ServiceError, now};
use crate::store::{
    CampaignRow, CarveRow, LogQuery, NodeRow, OptionRow, ScheduledQueryRow, StoreError,
};

/// Longest distributed query accepted, and the longest a campaign may wait.
const MAX_SQL_LEN: usize = 64 << 10;
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;
/// Most log lines one listing returns, and about the most bytes of them (a line larger than
/// this is returned alone).
const MAX_LOG_LIMIT: i64 = 10_000;
const MAX_LOG_PAGE_BYTES: i64 = 4 << 20;

/// The wire form of a stored scheduled query.
pub(super) fn scheduled_query_wire(row: &ScheduledQueryRow) -> osquery_tls::config::ScheduledQuery {
    osquery_tls::config::ScheduledQuery {
        query: row.query.clone(),
        interval: row.interval_secs.max(1) as u64,
        snapshot: (row.snapshot != 0).then_some(true),
        removed: None,
        platform: (!row.platform.is_empty()).then(|| row.platform.clone()),
        description: None,
    }
}

/// Stored JSON text (a log line or rows, kept as the node sent them, which the server checked
/// when it stored them), passed on without building it into a tree. Text that is somehow not
/// JSON is passed on as a JSON string instead.
fn raw_json(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "stored osquery JSON is not JSON; passed on as a string");
        serde_json::value::to_raw_value("(not JSON)").unwrap_or_else(|_| RawValue::NULL.to_owned())
    })
}

fn refused(code: ErrorCode, message: impl Into<String>) -> ServiceError {
    ServiceError::refused(code, message)
}

/// A name operators give things: letters, digits, `-`, `_` and `.`, 1 to 64 characters.
fn check_name(name: &str, code: ErrorCode, what: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(refused(
            code,
            format!("{what} {name:?} must be 1 to 64 letters, digits, '-', '_' or '.'"),
        ))
    }
}

/// Every node with the name of the host it is linked to.
struct Directory {
    nodes: Vec<(NodeRow, Option<String>)>,
}

impl Directory {
    fn by_id(&self) -> HashMap<i64, (&str, Option<&str>)> {
        self.nodes
            .iter()
            .map(|(n, h)| (n.id, (n.host_identifier.as_str(), h.as_deref())))
            .collect()
    }

    /// The nodes a list of host names or node identifiers names; an unknown name is an error.
    fn resolve(&self, names: &[String]) -> Result<Vec<i64>> {
        let mut ids = Vec::new();
        for name in names {
            let found: Vec<i64> = self
                .nodes
                .iter()
                .filter(|(n, h)| &n.host_identifier == name || h.as_deref() == Some(name))
                .map(|(n, _)| n.id)
                .collect();
            if found.is_empty() {
                return Err(refused(
                    ErrorCode::UnknownNode,
                    format!("no osquery node is {name:?}; `yeet osquery nodes` lists them"),
                ));
            }
            ids.extend(found);
        }
        ids.sort();
        ids.dedup();
        Ok(ids)
    }
}

impl Service {
    /// The nodes a scope covers, each with its host's name: for a user scoped by tags, the
    /// nodes linked to their hosts (a node linked to no host is in no scope).
    async fn node_directory(&self, scope: Scope<'_>) -> Result<Directory, StoreError> {
        let hosts: HashMap<i64, String> = self
            .store
            .list_hosts()
            .await?
            .into_iter()
            .filter(|h| scope.covers(&crate::store::split_tags(&h.tags)))
            .map(|h| (h.id, h.name))
            .collect();
        let nodes = self.store.list_nodes().await?;
        Ok(Directory {
            nodes: nodes
                .into_iter()
                .map(|n| {
                    let host = n.host_id.and_then(|id| hosts.get(&id).cloned());
                    (n, host)
                })
                .filter(|(_, host)| scope == Scope::Fleet || host.is_some())
                .collect(),
        })
    }

    pub async fn list_osquery_nodes(&self, p: &Principal) -> Result<Vec<OsqueryNode>> {
        let (_, scope) = require_role_in_scope(p, Role::Viewer)?;
        Ok(self
            .node_directory(scope)
            .await?
            .nodes
            .into_iter()
            .map(|(n, host)| OsqueryNode {
                host_identifier: n.host_identifier,
                host,
                hostname: n.hostname,
                platform: n.platform,
                os_name: n.os_name,
                osquery_version: n.osquery_version,
                enrolled_at: n.enrolled_at,
                enrollments: n.enrollments,
                last_seen: n.last_seen,
                takeovers_refused: n.takeovers_refused,
                last_refused_at: n.last_refused_at,
                log_bytes: n.log_bytes,
                log_refusals: n.log_refusals,
                last_log_refused_at: n.last_log_refused_at,
            })
            .collect())
    }

    pub async fn list_schedule(&self, p: &Principal) -> Result<Vec<ScheduledQuery>> {
        require_role(p, Role::Viewer)?;
        Ok(self
            .store
            .list_scheduled_queries()
            .await?
            .into_iter()
            .map(|r| ScheduledQuery {
                hosts: serde_json::from_str(&r.hosts).unwrap_or_default(),
                pack: (!r.pack.is_empty()).then_some(r.pack),
                platform: (!r.platform.is_empty()).then_some(r.platform),
                name: r.name,
                query: r.query,
                interval_secs: r.interval_secs.max(0) as u64,
                snapshot: r.snapshot != 0,
                created_at: r.created_at,
                created_by: r.created_by,
            })
            .collect())
    }

    pub async fn add_scheduled_query(
        &self,
        p: &Principal,
        q: ScheduledQuery,
    ) -> Result<ScheduledQuery> {
        let author = require_role(p, Role::Admin)?.to_owned();
        let invalid = |m: String| refused(ErrorCode::InvalidScheduledQuery, m);
        check_name(&q.name, ErrorCode::InvalidScheduledQuery, "the query name")?;
        if let Some(pack) = &q.pack {
            check_name(pack, ErrorCode::InvalidScheduledQuery, "the pack name")?;
        }
        if q.query.trim().is_empty() || q.query.len() > MAX_SQL_LEN {
            return Err(invalid(format!("the SQL must be 1 to {MAX_SQL_LEN} bytes")));
        }
        if !(1..=604_800).contains(&q.interval_secs) {
            return Err(invalid("the interval must be 1 to 604800 seconds".into()));
        }
        if q.hosts.iter().any(|h| h.is_empty() || h.len() > 255) {
            return Err(invalid("a host name is empty or too long".into()));
        }
        let row = ScheduledQueryRow {
            name: q.name.clone(),
            pack: q.pack.clone().unwrap_or_default(),
            query: q.query.clone(),
            interval_secs: q.interval_secs as i64,
            snapshot: i64::from(q.snapshot),
            platform: q.platform.clone().unwrap_or_default(),
            hosts: serde_json::to_string(&q.hosts).unwrap_or_else(|_| "[]".into()),
            created_at: now(),
            created_by: author,
        };
        let audit = self.audit_entry(
            p,
            "osquery.schedule.add",
            q.hosts.clone(),
            serde_json::json!({
                "name": q.name, "pack": q.pack, "query": q.query,
                "interval_secs": q.interval_secs, "platform": q.platform,
            }),
        );
        self.store
            .insert_scheduled_query(&row, &audit)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => refused(
                    ErrorCode::ScheduledQueryExists,
                    format!(
                        "a scheduled query named {} exists; `yeet osquery schedule rm {}` first",
                        q.name, q.name
                    ),
                ),
                e => e.into(),
            })?;
        Ok(ScheduledQuery {
            created_at: row.created_at,
            created_by: row.created_by,
            ..q
        })
    }

    pub async fn remove_scheduled_query(&self, p: &Principal, name: &str) -> Result<()> {
        require_role(p, Role::Admin)?;
        let audit = self.audit_entry(
            p,
            "osquery.schedule.remove",
            Vec::new(),
            serde_json::json!({ "name": name }),
        );
        if !self.store.delete_scheduled_query(name, &audit).await? {
            return Err(refused(
                ErrorCode::UnknownScheduledQuery,
                format!("no scheduled query is named {name:?}"),
            ));
        }
        Ok(())
    }

    pub async fn list_osquery_options(&self, p: &Principal) -> Result<Vec<OsqueryOption>> {
        require_role(p, Role::Viewer)?;
        Ok(self
            .store
            .list_osquery_options()
            .await?
            .into_iter()
            .map(|o| OsqueryOption {
                value: serde_json::from_str(&o.value).unwrap_or(serde_json::Value::String(o.value)),
                name: o.name,
                updated_at: o.updated_at,
                updated_by: o.updated_by,
            })
            .collect())
    }

    pub async fn set_osquery_option(
        &self,
        p: &Principal,
        name: &str,
        value: serde_json::Value,
    ) -> Result<OsqueryOption> {
        let author = require_role(p, Role::Admin)?.to_owned();
        check_name(name, ErrorCode::InvalidOsqueryOption, "the option name")?;
        if !(value.is_string() || value.is_number() || value.is_boolean()) {
            return Err(refused(
                ErrorCode::InvalidOsqueryOption,
                "an option's value is a string, number or boolean",
            ));
        }
        let row = OptionRow {
            name: name.to_owned(),
            value: value.to_string(),
            updated_at: now(),
            updated_by: author,
        };
        let audit = self.audit_entry(
            p,
            "osquery.option.set",
            Vec::new(),
            serde_json::json!({ "name": name, "value": value }),
        );
        self.store.set_osquery_option(&row, &audit).await?;
        Ok(OsqueryOption {
            name: row.name,
            value,
            updated_at: row.updated_at,
            updated_by: row.updated_by,
        })
    }

    pub async fn remove_osquery_option(&self, p: &Principal, name: &str) -> Result<()> {
        require_role(p, Role::Admin)?;
        let audit = self.audit_entry(
            p,
            "osquery.option.remove",
            Vec::new(),
            serde_json::json!({ "name": name }),
        );
        if !self.store.delete_osquery_option(name, &audit).await? {
            return Err(refused(
                ErrorCode::InvalidOsqueryOption,
                format!("the option {name:?} is not set"),
            ));
        }
        Ok(())
    }

    pub async fn list_osquery_logs(&self, p: &Principal, f: LogFilter) -> Result<OsqueryLogPage> {
        let (_, scope) = require_role_in_scope(p, Role::Viewer)?;
        let directory = self.node_directory(scope).await?;
        let node_ids = match &f.host {
            Some(h) => Some(directory.resolve(std::slice::from_ref(h))?),
            None if scope == Scope::Fleet => None,
            None => Some(directory.nodes.iter().map(|(n, _)| n.id).collect()),
        };
        let (rows, more) = self
            .store
            .list_log_lines(
                &LogQuery {
                    node_ids,
                    name: f.query,
                    kind: f.kind,
                    since: f.since,
                    after_id: f.after,
                    limit: f.limit.unwrap_or(1000).clamp(1, MAX_LOG_LIMIT),
                },
                MAX_LOG_PAGE_BYTES,
            )
            .await?;
        let by_id = directory.by_id();
        let next_after = rows.last().map(|r| r.id).filter(|_| more);
        let lines = rows
            .into_iter()
            .map(|r| {
                let (node, host) = by_id.get(&r.node_id).copied().unwrap_or(("?", None));
                OsqueryLogLine {
                    id: r.id,
                    node: node.to_owned(),
                    host: host.map(str::to_owned),
                    kind: r.kind,
                    name: r.name,
                    logged_at: r.logged_at,
                    received_at: r.received_at,
                    line: raw_json(r.line),
                }
            })
            .collect();
        Ok(OsqueryLogPage { lines, next_after })
    }

    /// Starts a distributed query on the named nodes (or all); they pick it up at their
    /// next read.
    pub async fn start_osquery_query(&self, p: &Principal, q: StartQuery) -> Result<Campaign> {
        let (author, scope) = require_role_in_scope(p, Role::Admin)?;
        let author = author.to_owned();
        let invalid = |m: &str| refused(ErrorCode::InvalidCampaign, m);
        if q.query.trim().is_empty() || q.query.len() > MAX_SQL_LEN {
            return Err(invalid("the SQL is empty or longer than 64 KiB"));
        }
        if q.all != q.hosts.is_empty() {
            return Err(invalid(
                "name hosts, or ask for all of them (--all), not both or neither",
            ));
        }
        // `--all`, for a scoped admin, is all of their nodes.
        let directory = self.node_directory(scope).await?;
        let ids = if q.all {
            directory.nodes.iter().map(|(n, _)| n.id).collect()
        } else {
            directory.resolve(&q.hosts)?
        };
        if ids.is_empty() {
            return Err(invalid("no osquery node is enrolled"));
        }
        self.create_campaign(p, &author, &q.query, "query", q.timeout_secs, &ids, scope)
            .await
    }

    /// Starts a carve of `path` on one host: a distributed query on the `carves` table.
    pub async fn start_osquery_carve(&self, p: &Principal, c: StartCarve) -> Result<Campaign> {
        let (author, scope) = require_role_in_scope(p, Role::Admin)?;
        let author = author.to_owned();
        let sql = osquery_tls::carve::carve_query(&c.path, c.path.contains('%'))
            .filter(|_| !c.path.is_empty() && c.path.len() <= 4096)
            .ok_or_else(|| {
                refused(
                    ErrorCode::InvalidCampaign,
                    "the path is empty, too long or holds NUL",
                )
            })?;
        let ids = self
            .node_directory(scope)
            .await?
            .resolve(std::slice::from_ref(&c.host))?;
        self.create_campaign(p, &author, &sql, "carve", c.timeout_secs, &ids, scope)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_campaign(
        &self,
        p: &Principal,
        author: &str,
        sql: &str,
        kind: &str,
        timeout: u64,
        ids: &[i64],
        scope: Scope<'_>,
    ) -> Result<Campaign> {
        if !(1..=MAX_TIMEOUT_SECS).contains(&timeout) {
            return Err(refused(
                ErrorCode::InvalidCampaign,
                format!("the timeout must be 1 to {MAX_TIMEOUT_SECS} seconds"),
            ));
        }
        let created_at = now();
        let directory = self.node_directory(scope).await?;
        let by_id = directory.by_id();
        let hosts = ids
            .iter()
            .filter_map(|id| by_id.get(id).and_then(|(_, host)| *host))
            .map(str::to_owned)
            .collect();
        let audit = self.audit_entry(
            p,
            if kind == "carve" {
                "osquery.carve"
            } else {
                "osquery.query"
            },
            hosts,
            serde_json::json!({ "query": sql, "nodes": ids.len(), "timeout_secs": timeout }),
        );
        let row = self
            .store
            .insert_campaign(
                &CampaignRow {
                    id: 0,
                    query: sql.to_owned(),
                    kind: kind.to_owned(),
                    created_at,
                    created_by: author.to_owned(),
                    deadline: created_at + timeout as i64,
                },
                ids,
                &audit,
            )
            .await?;
        self.note_campaign_deadline(row.deadline);
        if let Err(e) = self
            .store
            .notify(&format!("{EVENT_CAMPAIGN}{}", row.deadline))
            .await
        {
            tracing::warn!(error = %e, "could not tell other replicas of a new campaign");
        }
        tracing::info!(
            campaign = row.id,
            kind,
            nodes = ids.len(),
            by = author,
            "osquery campaign started"
        );
        self.campaign_view(row, scope).await
    }

    pub async fn show_osquery_campaign(&self, p: &Principal, id: i64) -> Result<Campaign> {
        let (_, scope) = require_role_in_scope(p, Role::Admin)?;
        let unknown = || {
            refused(
                ErrorCode::UnknownCampaign,
                format!("no distributed query has id {id}"),
            )
        };
        let row = self.store.campaign_by_id(id).await?.ok_or_else(unknown)?;
        let campaign = self.campaign_view(row, scope).await?;
        // A campaign on none of a scoped admin's nodes is, to them, no campaign.
        if campaign.targets.is_empty() {
            return Err(unknown());
        }
        Ok(campaign)
    }

    /// A campaign with the answers of the nodes `scope` covers.
    async fn campaign_view(&self, row: CampaignRow, scope: Scope<'_>) -> Result<Campaign> {
        let directory = self.node_directory(scope).await?;
        let by_id = directory.by_id();
        let targets = self
            .store
            .campaign_targets(row.id)
            .await?
            .into_iter()
            .filter(|t| scope == Scope::Fleet || by_id.contains_key(&t.node_id))
            .map(|t| {
                let (node, host) = by_id.get(&t.node_id).copied().unwrap_or(("?", None));
                CampaignTarget {
                    node: node.to_owned(),
                    host: host.map(str::to_owned),
                    sent_at: t.sent_at,
                    answered_at: t.answered_at,
                    status: t.status,
                    message: t.message,
                    rows: raw_json(t.rows.unwrap_or_else(|| "[]".into())),
                }
            })
            .collect();
        Ok(Campaign {
            id: row.id,
            query: row.query,
            kind: row.kind,
            created_at: row.created_at,
            created_by: row.created_by,
            deadline: row.deadline,
            targets,
        })
    }

    pub async fn list_osquery_carves(&self, p: &Principal) -> Result<Vec<CarveInfo>> {
        let (_, scope) = require_role_in_scope(p, Role::Viewer)?;
        let directory = self.node_directory(scope).await?;
        let by_id = directory.by_id();
        Ok(self
            .store
            .list_carves()
            .await?
            .into_iter()
            .filter(|(c, _)| scope == Scope::Fleet || by_id.contains_key(&c.node_id))
            .map(|(c, received)| {
                let (node, host) = by_id.get(&c.node_id).copied().unwrap_or(("?", None));
                CarveInfo {
                    id: c.id,
                    node: node.to_owned(),
                    host: host.map(str::to_owned),
                    campaign_id: c.campaign_id,
                    block_count: c.block_count,
                    blocks_received: received,
                    carve_size: c.carve_size,
                    started_at: c.started_at,
                    completed_at: c.completed_at,
                    sha256: c.sha256,
                }
            })
            .collect())
    }

    /// A complete carve an admin may download (its blocks are read by the HTTP layer).
    pub async fn carve_for_download(&self, p: &Principal, id: i64) -> Result<CarveRow> {
        let (_, scope) = require_role_in_scope(p, Role::Admin)?;
        let carve = match self.store.carve_by_id(id).await? {
            Some(carve) if scope == Scope::Fleet => carve,
            Some(carve)
                if self
                    .node_directory(scope)
                    .await?
                    .nodes
                    .iter()
                    .any(|(n, _)| n.id == carve.node_id) =>
            {
                carve
            }
            _ => {
                return Err(refused(
                    ErrorCode::UnknownCarve,
                    format!("no carve has id {id}"),
                ));
            }
        };
        if carve.completed_at.is_none() {
            return Err(refused(
                ErrorCode::InvalidCarve,
                format!("carve {id} is not complete yet; `yeet carves` shows its blocks"),
            ));
        }
        Ok(carve)
    }
}
