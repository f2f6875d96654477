//! Activation reports: each attempt's result, reason and compressed log, kept per host.

use base64::Engine;
use std::io::Read;
use yeet_proto::ErrorCode;
use yeet_proto::api::{Activation, ActivationLog, ActivationReport, Role};

use super::auth::{require_host, require_role_in_scope};
use super::{Principal, Result, Service, ServiceError};
use crate::store::ActivationRow;

/// Largest decompressed log the server accepts; agents send at most the tail of 256 KiB.
pub const MAX_LOG_BYTES: u64 = 1 << 20;
const DEFAULT_HISTORY: i64 = 20;

fn to_api(r: ActivationRow) -> Activation {
    Activation {
        id: r.id,
        host: r.host_name,
        store_path: r.store_path,
        release_id: r.release_id,
        result: r.result.0,
        reason: r.reason,
        started_at: r.started_at,
        finished_at: r.finished_at,
        reboot_required: r.reboot_required != 0,
    }
}

/// Decompresses a gzip log, refusing anything larger than `MAX_LOG_BYTES` (gzip bombs).
fn gunzip(bytes: &[u8]) -> Result<String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .take(MAX_LOG_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            ServiceError::refused(
                ErrorCode::InvalidLog,
                format!("the log is not valid gzip: {e}"),
            )
        })?;
    if out.len() as u64 > MAX_LOG_BYTES {
        return Err(ServiceError::refused(
            ErrorCode::LogTooLarge,
            format!("the decompressed log exceeds {MAX_LOG_BYTES} bytes"),
        ));
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

impl Service {
    pub async fn report_activation(
        &self,
        principal: &Principal,
        report: ActivationReport,
    ) -> Result<Activation> {
        let (host_id, host_name) = require_host(principal)?;
        report
            .store_path
            .parse::<nix_meta::StorePath>()
            .map_err(|e| ServiceError::refused(ErrorCode::InvalidStorePath, e.to_string()))?;
        let log_gzip = if report.log_gzip_base64.is_empty() {
            Vec::new()
        } else {
            base64::engine::general_purpose::STANDARD
                .decode(&report.log_gzip_base64)
                .map_err(|_| {
                    ServiceError::refused(ErrorCode::InvalidLog, "log_gzip_base64 is not base64")
                })?
        };
        if !log_gzip.is_empty() {
            gunzip(&log_gzip)?;
        }
        let row = ActivationRow {
            id: 0,
            host_id,
            host_name: host_name.to_owned(),
            store_path: report.store_path,
            release_id: report.release_id,
            result: crate::store::Wire(report.result),
            reason: yeet_proto::text::clean(&report.reason, 2000, true),
            started_at: report.started_at,
            finished_at: report.finished_at,
            reboot_required: i64::from(report.reboot_required),
        };
        let id = self.store.record_activation(&row, &log_gzip).await?;
        self.note_fleet_change();
        // A result may pass or fail a rollout's gate.
        self.wake_rollouts();
        tracing::info!(host = host_name, result = row.result.0.as_str(), reason = %row.reason, "activation reported");
        Ok(to_api(ActivationRow { id, ..row }))
    }

    pub async fn list_activations(
        &self,
        principal: &Principal,
        host: &str,
        limit: Option<i64>,
    ) -> Result<Vec<Activation>> {
        let (_, scope) = require_role_in_scope(principal, Role::Viewer)?;
        let row = self.host_in_scope(scope, host).await?;
        let limit = limit.unwrap_or(DEFAULT_HISTORY).clamp(1, 1000);
        Ok(self
            .store
            .list_activations(row.id, limit)
            .await?
            .into_iter()
            .map(to_api)
            .collect())
    }

    pub async fn latest_log(&self, principal: &Principal, host: &str) -> Result<ActivationLog> {
        let (_, scope) = require_role_in_scope(principal, Role::Viewer)?;
        let row = self.host_in_scope(scope, host).await?;
        let (activation, log_gzip) =
            self.store
                .latest_activation_log(row.id)
                .await?
                .ok_or_else(|| {
                    ServiceError::refused(
                        ErrorCode::NoActivation,
                        format!("{host} has not reported an activation yet"),
                    )
                })?;
        let log = if log_gzip.is_empty() {
            String::new()
        } else {
            gunzip(&log_gzip)?
        };
        Ok(ActivationLog {
            activation: to_api(activation),
            log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_bombs_are_refused() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![b'a'; (MAX_LOG_BYTES + 10) as usize])
            .unwrap();
        let bomb = enc.finish().unwrap();
        assert!(bomb.len() < 10_000);
        assert!(matches!(
            gunzip(&bomb),
            Err(ServiceError::Refused {
                code: ErrorCode::LogTooLarge,
                ..
            })
        ));
        assert!(matches!(
            gunzip(b"not gzip"),
            Err(ServiceError::Refused {
                code: ErrorCode::InvalidLog,
                ..
            })
        ));
    }
}
