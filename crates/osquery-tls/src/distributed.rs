//! Distributed queries (`--distributed_plugin=tls`): every `--distributed_interval` seconds
//! osqueryd posts its node key to the read endpoint and gets queries by id; it runs them and
//! posts the rows, a status per query (0: success) and error messages to the write endpoint.
//!
//! Wire behaviour learnt from osquery's `plugins/distributed/tls_distributed.cpp` and
//! `osquery/distributed/distributed.cpp` (the write body: `queries`, `statuses`, `messages`,
//! and `stats` in newer versions). A read answer may carry `accelerate`: osqueryd then reads
//! every second for that many seconds, which makes follow-up queries fast.

use serde::de::Deserializer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::{Row, lenient};

/// The answer to a distributed read: query id → SQL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadResponse {
    #[serde(default)]
    pub queries: BTreeMap<String, String>,
    /// Query id → a query that must return rows for the query of the same id to run.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub discovery: BTreeMap<String, String>,
    /// Seconds of reading every second instead of every `--distributed_interval`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient::opt_u64"
    )]
    pub accelerate: Option<u64>,
}

/// The results of distributed queries.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    #[serde(default)]
    pub node_key: String,
    /// Query id → its rows. A failed query has no rows, which some versions send as `""`.
    #[serde(default, deserialize_with = "rows_by_id")]
    pub queries: BTreeMap<String, Vec<Row>>,
    /// Query id → 0 on success, else the SQLite or osquery error code.
    #[serde(default, deserialize_with = "lenient::i64_map")]
    pub statuses: BTreeMap<String, i64>,
    /// Query id → error message, for failed queries.
    #[serde(default)]
    pub messages: BTreeMap<String, String>,
    /// Query id → resource use (wall time, memory); kept as sent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub stats: BTreeMap<String, serde_json::Value>,
}

/// Rows by query id, where a query without rows may be `""`, `null` or `[]`.
fn rows_by_id<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, Vec<Row>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Rows {
        Rows(Vec<Row>),
        Nothing(Option<String>),
    }
    let raw: BTreeMap<String, Rows> = BTreeMap::deserialize(d)?;
    raw.into_iter()
        .map(|(id, rows)| match rows {
            Rows::Rows(rows) => Ok((id, rows)),
            Rows::Nothing(None) => Ok((id, Vec::new())),
            Rows::Nothing(Some(s)) if s.is_empty() => Ok((id, Vec::new())),
            Rows::Nothing(Some(_)) => Err(serde::de::Error::custom(format!(
                "the rows of query {id:?} are neither an array of objects nor empty"
            ))),
        })
        .collect()
}

/// One query's outcome, gathered from the write body's maps.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOutcome {
    pub id: String,
    pub rows: Vec<Row>,
    /// 0 on success. A query that has rows but no status succeeded (older clients).
    pub status: i64,
    pub message: Option<String>,
    pub stats: Option<serde_json::Value>,
}

impl WriteRequest {
    /// Every query id the body mentions, with all that it says about it.
    pub fn outcomes(self) -> Vec<QueryOutcome> {
        let WriteRequest {
            mut queries,
            mut statuses,
            mut messages,
            mut stats,
            ..
        } = self;
        let mut ids: Vec<String> = queries.keys().chain(statuses.keys()).cloned().collect();
        ids.extend(messages.keys().cloned());
        ids.sort();
        ids.dedup();
        ids.into_iter()
            .map(|id| QueryOutcome {
                rows: queries.remove(&id).unwrap_or_default(),
                status: statuses.remove(&id).unwrap_or(0),
                message: messages.remove(&id).filter(|m| !m.is_empty()),
                stats: stats.remove(&id),
                id,
            })
            .collect()
    }
}
