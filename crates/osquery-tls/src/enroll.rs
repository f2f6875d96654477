//! Enrollment (`--enroll_tls_endpoint`): the node proves it knows the enroll secret and gets
//! a node key, which it sends with every later request.
//!
//! Wire behaviour learnt from osquery's `plugins/remote/enroll/tls_enroll.cpp`: the body holds
//! `enroll_secret` (its name can be changed with the hidden `--tls_enroll_override`),
//! `host_identifier` (per `--host_identifier`: hostname, uuid, instance, ephemeral or
//! specified), `platform_type` (the platform bitmask as a decimal *string*) and
//! `host_details`, the rows of `os_version`, `osquery_info`, `system_info` and
//! `platform_info`. The answer's key is read from `node_key`, or else from `id`.

use serde::{Deserialize, Serialize};

use crate::{Row, lenient};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnrollRequest {
    #[serde(default)]
    pub enroll_secret: String,
    #[serde(default)]
    pub host_identifier: String,
    /// osquery's platform bitmask (see [`platform_names`]).
    #[serde(default, deserialize_with = "lenient::opt_u64")]
    pub platform_type: Option<u64>,
    #[serde(default)]
    pub host_details: HostDetails,
}

/// The host's self-description at enrollment: one row of each table, values as strings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HostDetails {
    #[serde(default)]
    pub os_version: Row,
    #[serde(default)]
    pub osquery_info: Row,
    #[serde(default)]
    pub system_info: Row,
    #[serde(default)]
    pub platform_info: Row,
}

/// A column's value as text, however it was sent; `None` when absent or empty.
fn text(row: &Row, column: &str) -> Option<String> {
    let value = match row.get(column)? {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => return None,
    };
    (!value.is_empty()).then_some(value)
}

impl HostDetails {
    /// `system_info.hostname`, falling back to `computer_name`.
    pub fn hostname(&self) -> Option<String> {
        text(&self.system_info, "hostname").or_else(|| text(&self.system_info, "computer_name"))
    }

    /// The hardware UUID (`system_info.uuid`).
    pub fn hardware_uuid(&self) -> Option<String> {
        text(&self.system_info, "uuid")
    }

    /// The osquery version (`osquery_info.version`).
    pub fn osquery_version(&self) -> Option<String> {
        text(&self.osquery_info, "version")
    }

    /// The operating system, e.g. "NixOS 24.11 (Vicuna)".
    pub fn os_name(&self) -> Option<String> {
        let name = text(&self.os_version, "name")?;
        Some(match text(&self.os_version, "version") {
            Some(version) => format!("{name} {version}"),
            None => name,
        })
    }
}

/// The answer to an accepted enrollment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub node_key: String,
    #[serde(default)]
    pub node_invalid: bool,
}

impl EnrollResponse {
    pub fn new(node_key: String) -> Self {
        EnrollResponse {
            node_key,
            node_invalid: false,
        }
    }
}

/// The bits of osquery's `PlatformType` (`osquery/utils/info/platform_type.h`).
const PLATFORM_BITS: [(u64, &str); 6] = [
    (0x01, "posix"),
    (0x02, "windows"),
    (0x04, "bsd"),
    (0x08, "linux"),
    (0x10, "darwin"),
    (0x20, "freebsd"),
];

/// The platform names a bitmask holds, e.g. 9 → `["posix", "linux"]`.
pub fn platform_names(bits: u64) -> Vec<&'static str> {
    PLATFORM_BITS
        .iter()
        .filter(|(bit, _)| bits & bit != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// The most specific platform name of a bitmask ("linux" rather than "posix").
pub fn platform_name(bits: u64) -> Option<&'static str> {
    platform_names(bits)
        .into_iter()
        .rfind(|n| *n != "posix")
        .or_else(|| (bits & 0x01 != 0).then_some("posix"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platform_bits_name_the_platform() {
        assert_eq!(platform_names(9), ["posix", "linux"]);
        assert_eq!(platform_name(9), Some("linux"));
        assert_eq!(platform_name(0x11), Some("darwin"));
        assert_eq!(platform_name(2), Some("windows"));
        assert_eq!(platform_name(1), Some("posix"));
        assert_eq!(platform_name(0), None);
    }
}
