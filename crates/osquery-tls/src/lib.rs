//! The osquery TLS remote API, as osqueryd speaks it on the wire: the JSON bodies of its
//! enroll, config, logger, distributed and carver plugins, and the server's answers.
//!
//! The crate is pure (no I/O, no HTTP types), so any server or test client can use it.
//! It accepts what real clients send, not only what the documentation shows:
//! - numbers that older clients (boost `property_tree` serialization) send as strings, such
//!   as `"unixTime": "1700000000"` or `"block_count": "3"` ([`lenient`]);
//! - result logs in all three shapes: one event per row (`action` + `columns`), batched
//!   differentials (`diffResults`) and snapshots ([`log::ResultLog`]);
//! - gzip-compressed bodies (`--logger_tls_compress`), inflated with a hard output limit so
//!   that a small body cannot expand into gigabytes ([`body::decode`]).
//!
//! How osqueryd reacts to answers matters as much as their shape. It ignores the HTTP status
//! code and reads the body: `{"node_invalid": true}` makes it drop its node key and enroll
//! again; a body with an `"error"` member, or one that is not JSON, makes it retry later
//! (logs stay buffered). [`NodeInvalid`] and [`ErrorBody`] are those two answers.

pub mod body;
pub mod carve;
pub mod config;
pub mod distributed;
pub mod enroll;
pub mod lenient;
pub mod log;

use serde::{Deserialize, Serialize};

/// Default endpoint paths of a yeet server (osqueryd's `--*_tls_endpoint` flags).
pub mod paths {
    pub const ENROLL: &str = "/osquery/enroll";
    pub const CONFIG: &str = "/osquery/config";
    pub const LOG: &str = "/osquery/log";
    pub const DISTRIBUTED_READ: &str = "/osquery/query/read";
    pub const DISTRIBUTED_WRITE: &str = "/osquery/query/write";
    pub const CARVE_INIT: &str = "/osquery/carver/init";
    pub const CARVE_BLOCK: &str = "/osquery/carver/block";
}

/// Any request that only identifies the node: config refresh and distributed read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRequest {
    #[serde(default)]
    pub node_key: String,
}

/// The answer to a request whose node key the server does not know (or to an enrollment
/// it refuses). osqueryd clears its node key and enrolls again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInvalid {
    pub node_invalid: bool,
    /// Shown in osqueryd's log after "Request failed: Invalid node key".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl NodeInvalid {
    pub fn new(error: impl Into<String>) -> Self {
        NodeInvalid {
            node_invalid: true,
            error: Some(error.into()),
        }
    }
}

/// A refusal that is not about the node key: osqueryd logs `error` and retries later, keeping
/// what it meant to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// The empty success answer of the logger and distributed write endpoints (`{}`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// A row of a query result: column name → value. osqueryd sends every value as a string
/// unless `--log_numerics_as_numbers` is set, so values stay JSON values.
pub type Row = serde_json::Map<String, serde_json::Value>;

/// True when a response body asks the client to enroll again, as osqueryd decides it.
pub fn asks_reenrollment(response: &serde_json::Value) -> bool {
    response.get("node_invalid").and_then(|v| v.as_bool()) == Some(true)
}
