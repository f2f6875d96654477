//! Distributed queries (`--distributed_plugin=tls`): every `--distributed_interval` seconds
//! osqueryd posts its node key to the read endpoint and gets queries by id; it runs them and
//! posts the rows, a status per query (0: success) and error messages to the write endpoint.
//!
//! Wire behaviour learnt from osquery's `plugins/distributed/tls_distributed.cpp` and
//! `osquery/distributed/distributed.cpp` (the write body: `queries`, `statuses`, `messages`,
//! and `stats` in newer versions). A read answer may carry `accelerate`: osqueryd then reads
//! every second for that many seconds, which makes follow-up queries fast.

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt;

use crate::lenient;

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

/// Most query ids one write may mention in each of its maps: a node answers only the
/// queries it was sent, and yeet sends one per open campaign.
pub const MAX_QUERIES_PER_WRITE: usize = 1024;

/// The results of distributed queries. Rows stay raw JSON text, borrowed from the body:
/// they are checked to be an array of objects, and never built into a tree.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WriteRequest<'a> {
    #[serde(default)]
    pub node_key: String,
    /// Query id → its rows. A failed query has no rows, which some versions send as `""`.
    #[serde(default, borrow, deserialize_with = "rows_by_id")]
    pub queries: BTreeMap<String, Option<&'a RawValue>>,
    /// Query id → 0 on success, else the SQLite or osquery error code.
    #[serde(default, deserialize_with = "statuses")]
    pub statuses: BTreeMap<String, i64>,
    /// Query id → error message, for failed queries.
    #[serde(default, deserialize_with = "bounded_map")]
    pub messages: BTreeMap<String, String>,
    /// Query id → resource use (wall time, memory); kept as sent.
    #[serde(
        default,
        borrow,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "bounded_map"
    )]
    pub stats: BTreeMap<String, &'a RawValue>,
}

/// A map of at most [`MAX_QUERIES_PER_WRITE`] entries, refused before it grows further.
fn bounded_map<'de, D, V>(d: D) -> Result<BTreeMap<String, V>, D::Error>
where
    D: Deserializer<'de>,
    V: Deserialize<'de>,
{
    struct Bounded<V>(std::marker::PhantomData<V>);
    impl<'de, V: Deserialize<'de>> Visitor<'de> for Bounded<V> {
        type Value = BTreeMap<String, V>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object keyed by query id")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((id, value)) = map.next_entry::<String, V>()? {
                if out.len() == MAX_QUERIES_PER_WRITE {
                    return Err(de::Error::custom(format!(
                        "a write answers at most {MAX_QUERIES_PER_WRITE} queries"
                    )));
                }
                out.insert(id, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(Bounded(std::marker::PhantomData))
}

fn statuses<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, i64>, D::Error> {
    #[derive(Deserialize)]
    struct Status(#[serde(deserialize_with = "lenient::i64")] i64);
    let map: BTreeMap<String, Status> = bounded_map(d)?;
    Ok(map.into_iter().map(|(k, Status(v))| (k, v)).collect())
}

/// Any JSON object, skipped unread: a `Vec` of these checks a value is an array of objects
/// without storing anything (it is zero-sized, so the `Vec` never allocates).
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<AnyObject, D::Error> {
        struct Object;
        impl<'de> Visitor<'de> for Object {
            type Value = AnyObject;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a row (an object)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        d.deserialize_map(Object)
    }
}

/// Rows by query id, where a query without rows may be `""`, `null` or `[]`; any rows must be
/// an array of objects.
fn rows_by_id<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Option<&'de RawValue>>, D::Error> {
    let raw: BTreeMap<String, &'de RawValue> = bounded_map(d)?;
    raw.into_iter()
        .map(|(id, rows)| {
            let text = rows.get();
            if text == "null" || text == "\"\"" {
                return Ok((id, None));
            }
            match serde_json::from_str::<Vec<AnyObject>>(text) {
                Ok(rows) if rows.is_empty() => Ok((id, None)),
                Ok(_) => Ok((id, Some(rows))),
                Err(_) => Err(de::Error::custom(format!(
                    "the rows of query {id:?} are neither an array of objects nor empty"
                ))),
            }
        })
        .collect()
}

/// One query's outcome, gathered from the write body's maps.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOutcome<'a> {
    pub id: String,
    /// The rows as JSON text (an array of objects); `None` when the query returned none.
    pub rows: Option<&'a str>,
    /// 0 on success. A query that has rows but no status succeeded (older clients).
    pub status: i64,
    pub message: Option<String>,
    pub stats: Option<&'a str>,
}

impl<'a> WriteRequest<'a> {
    /// Every query id the body mentions, with all that it says about it.
    pub fn outcomes(self) -> Vec<QueryOutcome<'a>> {
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
                rows: queries.remove(&id).flatten().map(RawValue::get),
                status: statuses.remove(&id).unwrap_or(0),
                message: messages.remove(&id).filter(|m| !m.is_empty()),
                stats: stats.remove(&id).map(RawValue::get),
                id,
            })
            .collect()
    }
}
