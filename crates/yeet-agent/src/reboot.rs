//! Reboots the server orders (the host needs one, its policy is `in-window`, and its
//! maintenance window is open): before rebooting, the agent records which system it
//! expects to boot in `/var/lib/yeet/reboot.json`, and marks the boot it leaves in
//! `/run/yeet/reboot-requested`. `/run` starts empty at every boot, so a record without
//! its marker means the machine booted since (a container shares the kernel's boot id,
//! so that cannot tell). The agent then checks what came up and reports it as it reports
//! any activation. A reboot that did not come up on its system is not tried again for
//! that system: people look at it.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use yeet_proto::api::ActivationResult;

/// How long the agent waits for its own reboot to take the machine down before it reports
/// that the reboot did not happen.
pub const REBOOT_GRACE_SECS: i64 = 300;

/// What the agent expects of a reboot it started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebootRecord {
    /// The profile's default system when it rebooted: what the boot should run.
    pub expected_system: String,
    /// The release naming that system, when the server's order said so.
    pub release_id: Option<i64>,
    /// The system that ran before the reboot.
    pub previous_system: Option<String>,
    pub requested_at: i64,
    /// The server's reason (`inside maintenance window `nights``).
    pub reason: String,
    /// How it ended, once that is known (decided once: a report retried later says the
    /// same).
    #[serde(default)]
    pub outcome: Option<RebootOutcome>,
    /// The server has the outcome. A failed reboot's record is kept after that, so that
    /// the host does not reboot into the same system again.
    #[serde(default)]
    pub reported: bool,
}

impl RebootRecord {
    /// A reboot into `system` ended without the host running it.
    pub fn failed_into(&self, system: &str) -> bool {
        self.expected_system == system
            && self
                .outcome
                .as_ref()
                .is_some_and(|o| o.result != ActivationResult::Confirmed)
    }
}

/// How a reboot ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RebootOutcome {
    pub result: ActivationResult,
    pub reason: String,
    pub finished_at: i64,
}

/// Where a recorded reboot stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebootStatus {
    /// This boot asked for the reboot, and the machine is going down.
    Going,
    /// The machine booted since: what came up, and how that counts.
    Booted {
        result: ActivationResult,
        reason: String,
    },
    /// This boot asked for it long ago, and it never happened.
    DidNotHappen { reason: String },
}

/// The record's file and the marker of the boot that wrote it.
pub struct RebootFiles {
    record: PathBuf,
    marker: PathBuf,
}

impl RebootFiles {
    pub fn new(state_dir: &Path, run_dir: &Path) -> RebootFiles {
        RebootFiles {
            record: state_dir.join("reboot.json"),
            marker: run_dir.join("reboot-requested"),
        }
    }

    pub fn system() -> RebootFiles {
        RebootFiles::new(
            Path::new(crate::config::STATE_DIR),
            Path::new(crate::config::RUN_DIR),
        )
    }

    /// The record, if there is one. An unreadable record is dropped (and said so): it
    /// must not stop the host from rebooting when it is next told to.
    pub fn load(&self) -> Option<RebootRecord> {
        let bytes = std::fs::read(&self.record).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(error = %e, path = %self.record.display(), "discarding an unreadable reboot record");
                let _ = std::fs::remove_file(&self.record);
                None
            }
        }
    }

    /// Writes the record (atomically, synced: the reboot follows at once) and the marker
    /// of this boot.
    pub fn save(&self, record: &RebootRecord, this_boot: bool) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = self.record.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &self.record)?;
        if let Some(dir) = self.record.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        if this_boot {
            if let Some(dir) = self.marker.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&self.marker, b"")?;
        }
        Ok(())
    }

    pub fn clear(&self) {
        let _ = std::fs::remove_file(&self.record);
        let _ = std::fs::remove_file(&self.marker);
    }

    /// Where `record` stands now, with `booted` the system this boot runs.
    pub fn status(&self, record: &RebootRecord, booted: Option<&str>, now: i64) -> RebootStatus {
        if self.marker.exists() {
            if now - record.requested_at > REBOOT_GRACE_SECS {
                return RebootStatus::DidNotHappen {
                    reason: format!(
                        "asked to reboot ({}), but the machine did not go down within {} minutes: look at the host's shutdown",
                        record.reason,
                        REBOOT_GRACE_SECS / 60
                    ),
                };
            }
            return RebootStatus::Going;
        }
        match booted {
            Some(b) if b == record.expected_system => RebootStatus::Booted {
                result: ActivationResult::Confirmed,
                reason: format!("rebooted ({}) into the new system", record.reason),
            },
            other => RebootStatus::Booted {
                result: ActivationResult::Failed,
                reason: format!(
                    "rebooted ({}), but the machine came up on {} instead of {}: the boot loader did not boot the new default; look at the console",
                    record.reason,
                    other.unwrap_or("an unknown system"),
                    record.expected_system
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn record() -> RebootRecord {
        RebootRecord {
            expected_system: "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-new".into(),
            release_id: Some(7),
            previous_system: Some("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-old".into()),
            requested_at: 1_000,
            reason: "inside maintenance window `nights`".into(),
            outcome: None,
            reported: false,
        }
    }

    /// The marker of this boot says the machine is still going down (and, after the
    /// grace, that it never did); without it, the booted system decides.
    #[test]
    fn a_reboot_is_judged_by_this_boots_marker_and_the_booted_system() {
        let state = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let files = RebootFiles::new(state.path(), &run.path().join("yeet"));
        let r = record();
        files.save(&r, true).unwrap();
        assert_eq!(files.load(), Some(r.clone()));
        assert_eq!(files.status(&r, None, 1_010), RebootStatus::Going);
        assert!(matches!(
            files.status(&r, None, 1_000 + REBOOT_GRACE_SECS + 1),
            RebootStatus::DidNotHappen { .. }
        ));
        // A new boot: /run is empty again.
        std::fs::remove_dir_all(run.path().join("yeet")).unwrap();
        assert!(matches!(
            files.status(&r, Some(&r.expected_system), 2_000),
            RebootStatus::Booted {
                result: ActivationResult::Confirmed,
                ..
            }
        ));
        match files.status(&r, r.previous_system.as_deref(), 2_000) {
            RebootStatus::Booted {
                result: ActivationResult::Failed,
                reason,
            } => assert!(reason.contains("instead of"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // A corrupt record is dropped, not obeyed.
        std::fs::write(state.path().join("reboot.json"), "{\"expected_sys").unwrap();
        assert_eq!(files.load(), None);
        assert!(!state.path().join("reboot.json").exists());
    }
}
