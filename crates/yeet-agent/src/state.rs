//! The one piece of state the agent keeps: the activation in progress, so that an activation
//! interrupted by an agent restart, a killed activation process or a reboot can be finished.
//!
//! Files in the state directory (`/var/lib/yeet`):
//! - `activation.json`: what is being activated and how far it got (written atomically);
//! - `activation.log`: the activation's output, sent to the server with the result;
//! - `activation.lock`: held (flock) by the activation process for as long as it lives, so
//!   "is it still running?" has an exact answer even after pid reuse or a reboot;
//! - `activation.confirmed`: created by the agent once the new system checked in and passed
//!   its health check; the activation process waits for it;
//! - `activation.rejected`: created by the agent when the health check failed, with the
//!   reason; the activation process rolls back at once instead of waiting for the deadline;
//! - `last-activation.json` and `last-activation.log`: the latest reported activation and
//!   its log, for people at the machine (`yeet-agent status`, `yeet-agent log`).
//!
//! The activation process writes `activation.json`; the agent only creates it (before
//! starting the process), resolves it when its process died, and removes it after reporting.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use thiserror::Error;
use yeet_proto::api::ActivationResult;

use crate::config::ActivationMode;

#[derive(Debug, Error)]
pub enum StateError {
    #[error("cannot access {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("activation state {0} is corrupt: {1}")]
    Corrupt(PathBuf, String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Written by the agent; the activation process has not started yet.
    Pending,
    /// Realising the closure from the caches.
    Fetching,
    /// Profile set, `switch-to-configuration` running.
    Switching,
    /// Switched; waiting for the restarted agent to confirm before the deadline.
    Switched,
    /// Finished; `result` says how. The agent reports it and removes the state.
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Fetching => "fetching",
            Phase::Switching => "switching",
            Phase::Switched => "switched",
            Phase::Done => "done",
        }
    }
}

/// Who chose the system an activation switches to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// The server, by a release.
    #[default]
    Server,
    /// Someone at the machine, while the server lets the host run a local system.
    Detached,
    /// Someone at the machine, without asking the server (which may be unreachable). It is
    /// confirmed by the health check alone, and undone once the server is reached again,
    /// unless the host is detached by then.
    Forced,
}

impl Origin {
    /// Whether this host confirms the switch by itself (the restarted agent and the health
    /// check): a switch chosen at the machine needs no server, which may be away. Only a
    /// release's switch must prove that the new system reaches the server.
    pub fn confirmed_by_host(self) -> bool {
        self != Origin::Server
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Server => "release",
            Origin::Detached => "detached switch",
            Origin::Forced => "forced switch",
        }
    }
}

/// The latest reported activation, kept for people at the machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastActivation {
    pub store_path: String,
    pub origin: Origin,
    pub result: ActivationResult,
    pub reason: String,
    pub finished_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivationState {
    /// The system being activated, and the release that named it.
    pub store_path: String,
    pub release_id: Option<i64>,
    /// Substituters to fetch it from.
    pub caches: Vec<String>,
    /// What `/run/current-system` pointed at before; the rollback target.
    pub previous_system: Option<String>,
    pub mode: ActivationMode,
    /// The host's trusted keys when the activation began (`name:base64`).
    pub trusted_keys: Vec<String>,
    pub confirm_timeout_secs: u64,
    pub started_at: i64,
    /// How far the activation got; a restarted activator resumes from here.
    pub phase: Phase,
    /// Unix time by which the new system must be confirmed.
    pub confirm_deadline: Option<i64>,
    /// How it ended, and why, once it has.
    pub result: Option<ActivationResult>,
    pub reason: String,
    pub reboot_required: bool,
    pub finished_at: Option<i64>,
    /// How the activation process reaches the server (to fetch the new system's secrets).
    #[serde(default)]
    pub server: Option<ServerAccess>,
    /// The secrets generations this activation switches between, once written.
    #[serde(default)]
    pub secrets: Option<SecretsSwitch>,
    /// Who chose this system, and who asked for it at the machine (a local switch).
    #[serde(default)]
    pub origin: Origin,
    #[serde(default)]
    pub requested_by: Option<String>,
}

impl ActivationState {
    /// A forced switch that ended without leaving the host on its system (failed before the
    /// switch, refused, or rolled back): there is nothing of it to undo.
    pub fn is_forced_that_changed_nothing(&self) -> bool {
        self.origin == Origin::Forced
            && self.phase == Phase::Done
            && self
                .result
                .is_some_and(|r| r != ActivationResult::Confirmed)
    }
}

/// The server and the key the agent signs with: what the activation process needs to make
/// a signed request of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerAccess {
    pub url: String,
    pub key: PathBuf,
    pub ca_cert: Option<PathBuf>,
}

/// The new system's secrets, written to a generation of their own before the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretsSwitch {
    /// The live generation before the switch (the rollback's), if any.
    pub previous: Option<String>,
    /// What the new generation holds (its name included).
    pub held: crate::secrets::Held,
}

/// The activation files of one state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateDir { dir: dir.into() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn log_path(&self) -> PathBuf {
        self.path("activation.log")
    }

    /// The garbage-collector root of the system being activated: set when it is fetched,
    /// so that a collection between the fetch and the profile switch cannot delete it.
    /// Replaced by the next activation's; after the switch the profile keeps it alive.
    pub fn fetched_root(&self) -> PathBuf {
        self.path("fetched-system")
    }

    fn io(&self, name: &str) -> impl Fn(std::io::Error) -> StateError + '_ {
        let p = self.path(name);
        move |e| StateError::Io(p.clone(), e)
    }

    pub fn load(&self) -> Result<Option<ActivationState>, StateError> {
        let p = self.path("activation.json");
        match std::fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StateError::Corrupt(p, e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::Io(p, e)),
        }
    }

    /// Creates the directory, root-only: the activation log may carry secrets' names,
    /// unit output and paths that other local users have no business reading.
    fn ensure_dir(&self) -> Result<(), StateError> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.dir)
            .and_then(|_| {
                std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| StateError::Io(self.dir.clone(), e))
    }

    /// Opens the activation log for appending (created 0600).
    pub fn open_log(&self) -> Result<File, StateError> {
        use std::os::unix::fs::OpenOptionsExt;
        self.ensure_dir()?;
        File::options()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.log_path())
            .map_err(|e| StateError::Io(self.log_path(), e))
    }

    /// Writes the state atomically (temporary file, fsync, rename), so that a crash or a
    /// full disk leaves either the old state or the new one, never half of each.
    pub fn save(&self, state: &ActivationState) -> Result<(), StateError> {
        self.ensure_dir()?;
        let tmp = self.path("activation.json.tmp");
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| StateError::Corrupt(tmp.clone(), e.to_string()))?;
        let mut f = File::create(&tmp).map_err(self.io("activation.json.tmp"))?;
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .map_err(self.io("activation.json.tmp"))?;
        std::fs::rename(&tmp, self.path("activation.json")).map_err(self.io("activation.json"))
    }

    /// Removes every activation file once the result has been reported.
    pub fn clear(&self) -> Result<(), StateError> {
        for name in [
            "activation.json",
            "activation.log",
            "activation.confirmed",
            "activation.rejected",
            "activation.json.tmp",
        ] {
            match std::fs::remove_file(self.path(name)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StateError::Io(self.path(name), e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Keeps the finished activation's summary and log as the latest one, then removes the
    /// activation files. Called once its report reached the server.
    pub fn retire(&self, st: &ActivationState) -> Result<(), StateError> {
        if let Some(result) = st.result {
            let last = LastActivation {
                store_path: st.store_path.clone(),
                origin: st.origin,
                result,
                reason: st.reason.clone(),
                finished_at: st.finished_at.unwrap_or_default(),
            };
            let bytes = serde_json::to_vec_pretty(&last).map_err(|e| {
                StateError::Corrupt(self.path("last-activation.json"), e.to_string())
            })?;
            std::fs::write(self.path("last-activation.json"), bytes)
                .map_err(self.io("last-activation.json"))?;
            match std::fs::rename(self.log_path(), self.path("last-activation.log")) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StateError::Io(self.log_path(), e));
                }
                _ => {}
            }
        }
        self.clear()
    }

    /// The latest reported activation, if one was kept and is readable.
    pub fn last(&self) -> Option<LastActivation> {
        serde_json::from_slice(&std::fs::read(self.path("last-activation.json")).ok()?).ok()
    }

    /// The last `max` bytes of the log of the activation in progress, else of the latest
    /// reported one.
    pub fn latest_log(&self, max: usize) -> String {
        if self.log_path().exists() {
            return self.log_tail(max);
        }
        tail_of(&self.path("last-activation.log"), max)
    }

    /// Up to `max` bytes of the current log (that of the activation in progress, else the
    /// latest one) from byte `offset` on: what a follower has not seen yet.
    pub fn log_since(&self, offset: u64, max: usize) -> Vec<u8> {
        use std::io::{Read, Seek, SeekFrom};
        let path = if self.log_path().exists() {
            self.log_path()
        } else {
            self.path("last-activation.log")
        };
        let mut bytes = Vec::new();
        if let Ok(mut f) = File::open(path)
            && f.seek(SeekFrom::Start(offset)).is_ok()
        {
            let _ = f.take(max as u64).read_to_end(&mut bytes);
        }
        bytes
    }

    /// Takes the activation lock without waiting; `None` when another live process holds it.
    /// The lock is released when the returned file is dropped or the process dies.
    pub fn try_lock(&self) -> Result<Option<File>, StateError> {
        self.ensure_dir()?;
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.path("activation.lock"))
            .map_err(self.io("activation.lock"))?;
        match f.try_lock() {
            Ok(()) => Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(StateError::Io(self.path("activation.lock"), e))
            }
        }
    }

    /// True while an activation process is alive.
    pub fn activator_alive(&self) -> Result<bool, StateError> {
        Ok(self.try_lock()?.is_none())
    }

    pub fn mark_confirmed(&self) -> Result<(), StateError> {
        File::create(self.path("activation.confirmed"))
            .map(drop)
            .map_err(self.io("activation.confirmed"))
    }

    pub fn is_confirmed(&self) -> bool {
        self.path("activation.confirmed").exists()
    }

    pub fn mark_rejected(&self, reason: &str) -> Result<(), StateError> {
        std::fs::write(self.path("activation.rejected"), reason)
            .map_err(self.io("activation.rejected"))
    }

    /// Why the agent rejected the new system, if it did.
    pub fn rejected(&self) -> Option<String> {
        std::fs::read_to_string(self.path("activation.rejected")).ok()
    }

    /// The last `max` bytes of the activation log (the end is where failures are).
    pub fn log_tail(&self, max: usize) -> String {
        tail_of(&self.log_path(), max)
    }
}

/// The last `max` bytes of a file (empty when it cannot be read), read from the end so that
/// a huge log costs no more than `max` bytes of memory.
fn tail_of(path: &std::path::Path, max: usize) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max as u64);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_ok() {
        let _ = f.take(max as u64).read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> ActivationState {
        ActivationState {
            store_path: "/nix/store/q322pzff5rm7kwfwfbhcza6wr2b84wlm-s".into(),
            release_id: Some(1),
            caches: vec!["file:///c".into()],
            previous_system: None,
            mode: ActivationMode::Switch,
            trusted_keys: vec![],
            confirm_timeout_secs: 5,
            started_at: 1,
            phase: Phase::Pending,
            confirm_deadline: None,
            result: None,
            reason: String::new(),
            reboot_required: false,
            finished_at: None,
            server: None,
            secrets: None,
            origin: Origin::Server,
            requested_by: None,
        }
    }

    #[test]
    fn saves_loads_clears_and_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path().join("yeet"));
        assert_eq!(sd.load().unwrap(), None);
        sd.save(&state()).unwrap();
        assert_eq!(sd.load().unwrap(), Some(state()));
        sd.mark_confirmed().unwrap();
        assert!(sd.is_confirmed());
        sd.clear().unwrap();
        assert_eq!(sd.load().unwrap(), None);
        assert!(!sd.is_confirmed());
        std::fs::write(dir.path().join("yeet/activation.json"), "{\"store_pa").unwrap();
        assert!(matches!(sd.load(), Err(StateError::Corrupt(..))));
    }

    #[test]
    fn a_reported_activation_is_kept_as_the_latest_with_its_log() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        assert_eq!(sd.last(), None);
        let mut st = state();
        sd.save(&st).unwrap();
        sd.open_log()
            .unwrap()
            .write_all(b"fetching\nswitching\n")
            .unwrap();
        // A follower reads what it has not seen yet, from the running activation's log.
        assert_eq!(sd.log_since(9, 1024), b"switching\n");
        assert_eq!(sd.log_since(0, 8), b"fetching");
        st.phase = Phase::Done;
        st.result = Some(ActivationResult::Untrusted);
        st.reason = "not signed".into();
        st.finished_at = Some(7);
        st.origin = Origin::Forced;
        sd.retire(&st).unwrap();
        assert_eq!(sd.load().unwrap(), None);
        assert_eq!(
            sd.last(),
            Some(LastActivation {
                store_path: st.store_path.clone(),
                origin: Origin::Forced,
                result: ActivationResult::Untrusted,
                reason: "not signed".into(),
                finished_at: 7,
            })
        );
        // The log moved with it: the same offsets still read the same bytes.
        assert_eq!(sd.log_since(9, 1024), b"switching\n");
        assert_eq!(sd.latest_log(10), "switching\n");
        // A new activation's log is the current one again.
        sd.open_log().unwrap().write_all(b"next\n").unwrap();
        assert_eq!(sd.latest_log(1024), "next\n");
    }

    #[test]
    fn the_lock_tells_whether_an_activator_lives() {
        let dir = tempfile::tempdir().unwrap();
        let sd = StateDir::new(dir.path());
        assert!(!sd.activator_alive().unwrap());
        let held = sd.try_lock().unwrap().unwrap();
        assert!(sd.activator_alive().unwrap());
        drop(held);
        assert!(!sd.activator_alive().unwrap());
    }
}
