//! The config endpoint (`--config_tls_endpoint`, `--config_plugin=tls`): the node posts its
//! node key and gets its whole configuration: options, a schedule and packs. osqueryd asks
//! again every `--config_refresh` seconds (see osquery's `plugins/config/tls_config.cpp`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::lenient;

/// A node's configuration, as osqueryd reads it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Runtime flags, e.g. `"distributed_interval": 10`.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub options: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub schedule: BTreeMap<String, ScheduledQuery>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub packs: BTreeMap<String, Pack>,
}

/// One query osqueryd runs every `interval` seconds and logs the results of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledQuery {
    pub query: String,
    #[serde(deserialize_with = "lenient::u64")]
    pub interval: u64,
    /// Log the whole result each time instead of the difference to the last run.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub snapshot: Option<bool>,
    /// Whether differential results include removed rows (osquery's default: true).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_bool"
    )]
    pub removed: Option<bool>,
    /// Restrict to platforms, e.g. "linux" or "darwin".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A named group of scheduled queries, with conditions that apply to all of them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pack {
    #[serde(default)]
    pub queries: BTreeMap<String, ScheduledQuery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Queries that must return rows for the pack to run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub discovery: Vec<String>,
}

/// The name osqueryd gives a pack query's results in its logs: `pack_<pack>_<query>`
/// (`pack<delimiter>...` with the default `--pack_delimiter` of `_`).
pub fn pack_query_name(pack: &str, query: &str) -> String {
    format!("pack_{pack}_{query}")
}
