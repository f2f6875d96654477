//! The admin API of yeet's osquery side (`/v1/osquery/...`): nodes, the schedule and options
//! every node's config is built from, stored logs, distributed queries and carves. The
//! node-facing osquery API itself is the `osquery-tls` crate's.

use serde::{Deserialize, Serialize};

/// Paths of the osquery admin API.
pub mod paths {
    pub const NODES: &str = "/v1/osquery/nodes";
    pub const SCHEDULE: &str = "/v1/osquery/schedule";
    pub const OPTIONS: &str = "/v1/osquery/options";
    pub const LOGS: &str = "/v1/osquery/logs";
    pub const QUERIES: &str = "/v1/osquery/queries";
    pub const CARVES: &str = "/v1/osquery/carves";

    /// `/v1/osquery/schedule/{name}`
    pub fn scheduled_query(name: &str) -> String {
        format!("{SCHEDULE}/{name}")
    }

    /// `/v1/osquery/options/{name}`
    pub fn option(name: &str) -> String {
        format!("{OPTIONS}/{name}")
    }

    /// `/v1/osquery/queries/{id}`
    pub fn query(id: &str) -> String {
        format!("{QUERIES}/{id}")
    }

    /// `GET /v1/osquery/logs` with the filter's fields that are set.
    pub fn logs(f: &super::LogFilter) -> String {
        crate::api::paths::with_query(
            LOGS,
            &[
                ("host", f.host.clone()),
                ("query", f.query.clone()),
                ("kind", f.kind.clone()),
                ("since", f.since.map(|v| v.to_string())),
                ("after", f.after.map(|v| v.to_string())),
                ("limit", f.limit.map(|v| v.to_string())),
            ],
        )
    }

    /// `/v1/osquery/carves/{id}/archive`
    pub fn carve_archive(id: &str) -> String {
        format!("{CARVES}/{id}/archive")
    }
}

/// An enrolled osquery node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OsqueryNode {
    pub host_identifier: String,
    /// The yeet host it is linked to, if any.
    pub host: Option<String>,
    pub hostname: String,
    pub platform: String,
    pub os_name: String,
    pub osquery_version: String,
    pub enrolled_at: i64,
    /// How often it enrolled (more than once: it lost its key, or another node took its
    /// identifier once its key had gone quiet).
    pub enrollments: i64,
    pub last_seen: i64,
    /// Enrollments refused because they claimed this node's identifier while it was still
    /// checking in (someone holding the enroll secret, or a reinstall too soon), and the
    /// latest one's time.
    #[serde(default)]
    pub takeovers_refused: i64,
    #[serde(default)]
    pub last_refused_at: Option<i64>,
    /// Log bytes stored for this node, and its log batches refused for being over its rate
    /// or stored budget (`node_log_bytes_per_hour`, `node_log_bytes_stored`).
    #[serde(default)]
    pub log_bytes: i64,
    #[serde(default)]
    pub log_refusals: i64,
    #[serde(default)]
    pub last_log_refused_at: Option<i64>,
}

/// A scheduled query, as operators manage it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledQuery {
    pub name: String,
    pub query: String,
    pub interval_secs: u64,
    /// Log the whole result each run instead of the difference.
    #[serde(default)]
    pub snapshot: bool,
    /// The pack it belongs to; none: the top-level schedule.
    #[serde(default)]
    pub pack: Option<String>,
    /// Restrict to a platform, e.g. "linux".
    #[serde(default)]
    pub platform: Option<String>,
    /// Host names or node identifiers it runs on; empty: every node.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub created_at: i64,
    #[serde(default)]
    pub created_by: String,
}

/// An osqueryd option served in every node's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OsqueryOption {
    pub name: String,
    pub value: serde_json::Value,
    #[serde(default)]
    pub updated_at: i64,
    #[serde(default)]
    pub updated_by: String,
}

/// `PUT /v1/osquery/options/{name}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetOption {
    pub value: serde_json::Value,
}

/// Filters of `GET /v1/osquery/logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFilter {
    /// A host name or node identifier.
    #[serde(default)]
    pub host: Option<String>,
    /// A scheduled query's name (or a status line's severity).
    #[serde(default)]
    pub query: Option<String>,
    /// "result" or "status".
    #[serde(default)]
    pub kind: Option<String>,
    /// Received at or after this Unix time.
    #[serde(default)]
    pub since: Option<i64>,
    /// Only lines after this id (for following).
    #[serde(default)]
    pub after: Option<i64>,
    #[serde(default)]
    pub limit: Option<i64>,
}

/// `GET /v1/osquery/logs`: the lines that fit one answer, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OsqueryLogPage {
    pub lines: Vec<OsqueryLogLine>,
    /// Set when more lines may match: ask again with `after` set to it. An answer holds at
    /// most `limit` lines and about 4 MiB of them, so a page of huge lines is short.
    #[serde(default)]
    pub next_after: Option<i64>,
}

/// One stored log line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OsqueryLogLine {
    pub id: i64,
    pub node: String,
    pub host: Option<String>,
    pub kind: String,
    pub name: String,
    pub logged_at: i64,
    pub received_at: i64,
    /// The line as the node sent it: its JSON text, passed through unparsed.
    pub line: Box<serde_json::value::RawValue>,
}

/// `POST /v1/osquery/queries`: run SQL on nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartQuery {
    pub query: String,
    /// Host names or node identifiers.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Every enrolled node.
    #[serde(default)]
    pub all: bool,
    pub timeout_secs: u64,
}

/// `POST /v1/osquery/carves`: carve a file from a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartCarve {
    pub host: String,
    pub path: String,
    pub timeout_secs: u64,
}

/// A distributed query and what its nodes answered so far.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Campaign {
    pub id: i64,
    pub query: String,
    /// "query" or "carve".
    pub kind: String,
    pub created_at: i64,
    pub created_by: String,
    pub deadline: i64,
    pub targets: Vec<CampaignTarget>,
}

/// One node's part in a campaign.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CampaignTarget {
    pub node: String,
    pub host: Option<String>,
    /// When the node picked the query up.
    pub sent_at: Option<i64>,
    pub answered_at: Option<i64>,
    /// 0: success.
    pub status: Option<i64>,
    pub message: Option<String>,
    /// The rows as the node sent them: a JSON array of objects (`[]` before an answer),
    /// passed through unparsed. [`CampaignTarget::parsed_rows`] reads them.
    pub rows: Box<serde_json::value::RawValue>,
}

impl CampaignTarget {
    /// The rows as objects; rows that are not an array of objects read as none.
    pub fn parsed_rows(&self) -> Vec<serde_json::Map<String, serde_json::Value>> {
        serde_json::from_str(self.rows.get()).unwrap_or_default()
    }
}

/// A file carve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CarveInfo {
    pub id: i64,
    pub node: String,
    pub host: Option<String>,
    pub campaign_id: Option<i64>,
    pub block_count: i64,
    pub blocks_received: i64,
    pub carve_size: i64,
    pub started_at: i64,
    pub completed_at: Option<i64>,
    /// SHA-256 of the archive, once complete.
    pub sha256: Option<String>,
}
