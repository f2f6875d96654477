//! The logger endpoint (`--logger_plugin=tls`, `--logger_tls_endpoint`): osqueryd buffers log
//! lines and posts them in batches of up to `--logger_tls_max_lines` every
//! `--logger_tls_period` seconds, gzip-compressed with `--logger_tls_compress`.
//!
//! Wire behaviour learnt from osquery's `plugins/logger/tls_logger.cpp` (the batch: `node_key`,
//! `log_type` "result" or "status", `data` an array of the lines, each a JSON object) and
//! `osquery/core/query.cpp`/`osquery/logger` (the line formats). A failed post keeps the batch
//! buffered and retries it, so a refusal loses nothing on the node.
//!
//! The batch keeps its lines as raw JSON text, borrowed from the body: one malformed line
//! must not reject the others, and a server that only files a line (by query name and time)
//! must not build a tree of every row. [`LineSummary::of`] reads just that;
//! [`ResultLog::parse`] and [`StatusLog::parse`] read a whole line.

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::fmt;

use crate::{Row, lenient};

/// Most lines one batch may hold: 16 times osqueryd's `--logger_tls_max_lines` default.
pub const MAX_BATCH_LINES: usize = 16_384;

/// One batch of log lines, borrowing each line's text from the body it was read from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogRequest<'a> {
    #[serde(default)]
    pub node_key: String,
    pub log_type: LogType,
    #[serde(default, borrow, deserialize_with = "bounded_lines")]
    pub data: Vec<&'a RawValue>,
}

/// The `data` array, refused past [`MAX_BATCH_LINES`] before it grows further.
fn bounded_lines<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<&'de RawValue>, D::Error> {
    struct Lines;
    impl<'de> Visitor<'de> for Lines {
        type Value = Vec<&'de RawValue>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an array of log lines")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut lines = Vec::new();
            while let Some(line) = seq.next_element::<&'de RawValue>()? {
                if lines.len() == MAX_BATCH_LINES {
                    return Err(serde::de::Error::custom(format!(
                        "a batch holds at most {MAX_BATCH_LINES} lines; lower --logger_tls_max_lines"
                    )));
                }
                lines.push(line);
            }
            Ok(lines)
        }
    }
    d.deserialize_seq(Lines)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogType {
    /// Scheduled query results.
    Result,
    /// osqueryd's own log (glog lines).
    Status,
}

impl LogType {
    pub fn as_str(self) -> &'static str {
        match self {
            LogType::Result => "result",
            LogType::Status => "status",
        }
    }
}

/// What happened to a row between two runs of a scheduled query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Added,
    Removed,
    /// Part of a snapshot: the whole result of one run.
    Snapshot,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Added => "added",
            Action::Removed => "removed",
            Action::Snapshot => "snapshot",
        }
    }
}

/// The fields every result line carries, whatever its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultHeader {
    /// The scheduled query's name (`pack_<pack>_<query>` for pack queries).
    pub name: String,
    #[serde(default, rename = "hostIdentifier")]
    pub host_identifier: String,
    #[serde(default, rename = "calendarTime")]
    pub calendar_time: String,
    #[serde(default, rename = "unixTime", deserialize_with = "lenient::u64")]
    pub unix_time: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub epoch: u64,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub counter: u64,
    #[serde(default, deserialize_with = "lenient::bool")]
    pub numerics: bool,
    #[serde(default)]
    pub decorations: Row,
}

/// The rows of a result line, in the shape osqueryd chose.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultRows {
    /// Event format (the default, `--logger_event_type`): one row per line.
    Event { action: Action, columns: Row },
    /// Batch format: the whole difference of one run.
    Differential { added: Vec<Row>, removed: Vec<Row> },
    /// A snapshot query's whole result.
    Snapshot(Vec<Row>),
}

/// One result line.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultLog {
    pub header: ResultHeader,
    pub rows: ResultRows,
}

/// Every member a result line may have; which are present decides its shape.
#[derive(Deserialize)]
struct RawResult {
    #[serde(flatten)]
    header: ResultHeader,
    #[serde(default)]
    action: Option<Action>,
    #[serde(default)]
    columns: Option<Row>,
    #[serde(default, rename = "diffResults")]
    diff_results: Option<DiffResults>,
    #[serde(default)]
    snapshot: Option<Vec<Row>>,
}

#[derive(Deserialize)]
struct DiffResults {
    #[serde(default)]
    added: Vec<Row>,
    #[serde(default)]
    removed: Vec<Row>,
}

/// A line that is not what its batch claims.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed {kind} log line: {reason}")]
pub struct LineError {
    pub kind: &'static str,
    pub reason: String,
}

impl ResultLog {
    pub fn parse(line: &str) -> Result<ResultLog, LineError> {
        let error = |reason: String| LineError {
            kind: "result",
            reason,
        };
        let raw: RawResult = serde_json::from_str(line).map_err(|e| error(e.to_string()))?;
        let rows = match (raw.action, raw.columns, raw.diff_results, raw.snapshot) {
            (_, _, _, Some(rows)) => ResultRows::Snapshot(rows),
            (_, _, Some(diff), None) => ResultRows::Differential {
                added: diff.added,
                removed: diff.removed,
            },
            (Some(action), Some(columns), None, None) => ResultRows::Event { action, columns },
            _ => {
                return Err(error(
                    "it has none of columns+action, diffResults or snapshot".into(),
                ));
            }
        };
        Ok(ResultLog {
            header: raw.header,
            rows,
        })
    }

    /// Every row with what happened to it, whatever the line's shape.
    pub fn rows(&self) -> Vec<(Action, &Row)> {
        match &self.rows {
            ResultRows::Event { action, columns } => vec![(*action, columns)],
            ResultRows::Differential { added, removed } => added
                .iter()
                .map(|r| (Action::Added, r))
                .chain(removed.iter().map(|r| (Action::Removed, r)))
                .collect(),
            ResultRows::Snapshot(rows) => rows.iter().map(|r| (Action::Snapshot, r)).collect(),
        }
    }
}

/// One line of osqueryd's own log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusLog {
    #[serde(default, rename = "hostIdentifier")]
    pub host_identifier: String,
    #[serde(default, rename = "calendarTime")]
    pub calendar_time: String,
    #[serde(default, rename = "unixTime", deserialize_with = "lenient::u64")]
    pub unix_time: u64,
    /// glog severity: 0 info, 1 warning, 2 error, 3 fatal.
    #[serde(default, deserialize_with = "lenient::i64")]
    pub severity: i64,
    #[serde(default)]
    pub filename: String,
    #[serde(default, deserialize_with = "lenient::u64")]
    pub line: u64,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub decorations: Row,
}

impl StatusLog {
    pub fn parse(line: &str) -> Result<StatusLog, LineError> {
        serde_json::from_str(line).map_err(|e| LineError {
            kind: "status",
            reason: e.to_string(),
        })
    }

    /// The glog severity's name.
    pub fn severity_name(&self) -> &'static str {
        severity_name(self.severity)
    }
}

fn severity_name(severity: i64) -> &'static str {
    match severity {
        0 => "info",
        1 => "warning",
        2 => "error",
        3 => "fatal",
        _ => "unknown",
    }
}

/// What a line is filed under: a result line's query name or a status line's severity, and
/// the time it was logged. Reading it keeps nothing else of the line: rows, decorations and
/// messages are skipped unread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineSummary {
    pub name: String,
    pub unix_time: u64,
}

/// The members of a result line that [`LineSummary`] needs, and those that tell its shape.
#[derive(Deserialize)]
struct ResultSummary {
    name: String,
    #[serde(default, rename = "unixTime", deserialize_with = "lenient::u64")]
    unix_time: u64,
    action: Option<IgnoredAny>,
    columns: Option<IgnoredAny>,
    #[serde(rename = "diffResults")]
    diff_results: Option<IgnoredAny>,
    snapshot: Option<IgnoredAny>,
}

#[derive(Deserialize)]
struct StatusSummary {
    #[serde(default, rename = "unixTime", deserialize_with = "lenient::u64")]
    unix_time: u64,
    #[serde(default, deserialize_with = "lenient::i64")]
    severity: i64,
}

impl LineSummary {
    pub fn of(log_type: LogType, line: &str) -> Result<LineSummary, LineError> {
        let error = |reason: String| LineError {
            kind: log_type.as_str(),
            reason,
        };
        match log_type {
            LogType::Result => {
                let l: ResultSummary =
                    serde_json::from_str(line).map_err(|e| error(e.to_string()))?;
                let event = l.action.is_some() && l.columns.is_some();
                if !(event || l.diff_results.is_some() || l.snapshot.is_some()) {
                    return Err(error(
                        "it has none of columns+action, diffResults or snapshot".into(),
                    ));
                }
                Ok(LineSummary {
                    name: l.name,
                    unix_time: l.unix_time,
                })
            }
            LogType::Status => {
                let l: StatusSummary =
                    serde_json::from_str(line).map_err(|e| error(e.to_string()))?;
                Ok(LineSummary {
                    name: severity_name(l.severity).to_owned(),
                    unix_time: l.unix_time,
                })
            }
        }
    }
}
