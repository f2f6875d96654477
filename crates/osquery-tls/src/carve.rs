//! File carving: a distributed query on the `carves` table (`carve = 1`) makes osqueryd tar
//! the matching files (zstd-compressed with `--carver_compression`), announce the archive to
//! the start endpoint and post it in base64 blocks of `--carver_block_size` bytes to the
//! continue endpoint.
//!
//! Wire behaviour learnt from osquery's `osquery/carver/carver.cpp` (`Carver::postCarve`):
//! the start body has `block_count`, `block_size`, `carve_size`, `carve_id`, `request_id`
//! (the distributed query's id) and `node_key`, and the answer must carry `session_id`;
//! each block has `block_id` (from 0), `session_id`, `request_id` and `data`, but no node
//! key, so the session id is the block's only credential. Old clients send the sizes as
//! strings. A failed block post is not retried, so a server must accept blocks in any
//! order and may see gaps.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::lenient;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    #[serde(deserialize_with = "lenient::u64")]
    pub block_count: u64,
    #[serde(deserialize_with = "lenient::u64")]
    pub block_size: u64,
    #[serde(deserialize_with = "lenient::u64")]
    pub carve_size: u64,
    #[serde(default)]
    pub carve_id: String,
    #[serde(default)]
    pub request_id: String,
    #[serde(default)]
    pub node_key: String,
}

/// Why a carve announcement cannot be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitError {
    #[error("block_size is 0")]
    ZeroBlockSize,
    #[error("block_size {size} exceeds the largest accepted block, {limit} bytes")]
    BlockTooLarge { size: u64, limit: u64 },
    #[error("carve_size {size} exceeds the largest accepted carve, {limit} bytes")]
    CarveTooLarge { size: u64, limit: u64 },
    #[error("{count} blocks of {block_size} bytes cannot hold {carve_size} bytes exactly")]
    CountMismatch {
        count: u64,
        block_size: u64,
        carve_size: u64,
    },
}

impl InitRequest {
    /// Checks that the announced sizes agree and fit the limits: `block_count` must be
    /// exactly `ceil(carve_size / block_size)`, as osqueryd computes it.
    pub fn validate(&self, max_block_size: u64, max_carve_size: u64) -> Result<(), InitError> {
        if self.block_size == 0 {
            return Err(InitError::ZeroBlockSize);
        }
        if self.block_size > max_block_size {
            return Err(InitError::BlockTooLarge {
                size: self.block_size,
                limit: max_block_size,
            });
        }
        if self.carve_size > max_carve_size {
            return Err(InitError::CarveTooLarge {
                size: self.carve_size,
                limit: max_carve_size,
            });
        }
        if self.block_count != self.carve_size.div_ceil(self.block_size) {
            return Err(InitError::CountMismatch {
                count: self.block_count,
                block_size: self.block_size,
                carve_size: self.carve_size,
            });
        }
        Ok(())
    }

    /// How many bytes block `id` must hold: `block_size`, except the last, which holds the
    /// rest. `None` when the carve has no such block.
    pub fn expected_block_len(&self, id: u64) -> Option<u64> {
        if id >= self.block_count {
            return None;
        }
        let start = id.checked_mul(self.block_size)?;
        Some(self.carve_size.checked_sub(start)?.min(self.block_size))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitResponse {
    pub session_id: String,
    #[serde(default)]
    pub success: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRequest {
    #[serde(deserialize_with = "lenient::u64")]
    pub block_id: u64,
    #[serde(default)]
    pub session_id: String,
    #[serde(default)]
    pub request_id: String,
    /// The block's bytes, base64 (standard alphabet, padded).
    #[serde(default)]
    pub data: String,
    /// osqueryd does not send it; servers check it when another client does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_key: Option<String>,
}

impl BlockRequest {
    pub fn bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(self.data.as_bytes())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockResponse {
    pub success: bool,
}

/// The distributed query that makes osqueryd carve `path` (a file, or a `LIKE` pattern with
/// `%` when `pattern` is set). The path is quoted as an SQL string literal, so any byte but
/// NUL is safe in it; a path holding NUL is refused.
pub fn carve_query(path: &str, pattern: bool) -> Option<String> {
    if path.contains('\0') {
        return None;
    }
    let op = if pattern { "LIKE" } else { "=" };
    Some(format!(
        "SELECT * FROM carves WHERE carve = 1 AND path {op} {}",
        sql_string(path)
    ))
}

/// An SQL string literal: single quotes around, each quote doubled.
pub fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init(count: u64, block: u64, size: u64) -> InitRequest {
        InitRequest {
            block_count: count,
            block_size: block,
            carve_size: size,
            carve_id: "c".into(),
            request_id: "r".into(),
            node_key: "k".into(),
        }
    }

    #[test]
    fn block_count_must_match_the_size() {
        assert_eq!(init(3, 10, 25).validate(100, 1000), Ok(()));
        assert_eq!(init(0, 10, 0).validate(100, 1000), Ok(()));
        assert!(matches!(
            init(4, 10, 25).validate(100, 1000),
            Err(InitError::CountMismatch { .. })
        ));
        assert_eq!(
            init(1, 0, 0).validate(100, 1000),
            Err(InitError::ZeroBlockSize)
        );
        assert!(matches!(
            init(1, 101, 50).validate(100, 1000),
            Err(InitError::BlockTooLarge { .. })
        ));
        assert!(matches!(
            init(11, 100, 1001).validate(100, 1000),
            Err(InitError::CarveTooLarge { .. })
        ));
    }

    #[test]
    fn the_last_block_holds_the_rest() {
        let carve = init(3, 10, 25);
        assert_eq!(carve.expected_block_len(0), Some(10));
        assert_eq!(carve.expected_block_len(2), Some(5));
        assert_eq!(carve.expected_block_len(3), None);
        assert_eq!(init(3, u64::MAX, u64::MAX).expected_block_len(2), None);
        assert_eq!(init(5, 10, 25).expected_block_len(4), None);
    }

    #[test]
    fn carve_paths_are_quoted() {
        assert_eq!(
            carve_query("/etc/o'clock; DROP", false).as_deref(),
            Some("SELECT * FROM carves WHERE carve = 1 AND path = '/etc/o''clock; DROP'")
        );
        assert_eq!(
            carve_query("/var/log/%", true).as_deref(),
            Some("SELECT * FROM carves WHERE carve = 1 AND path LIKE '/var/log/%'")
        );
        assert_eq!(carve_query("/a\0b", false), None);
    }
}
