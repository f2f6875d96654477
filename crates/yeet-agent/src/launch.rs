//! Starting an activation, from the check-in loop (a release) or from the local socket (a
//! detached or forced switch). One gate decides, so that two activations never start at
//! once; the process that runs it lives outside the agent's lifetime.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use thiserror::Error;

use crate::state::{ActivationState, Origin, Phase, StateDir, StateError};

#[derive(Debug, Error)]
pub enum LaunchError {
    /// An activation is recorded and not yet reported: one at a time.
    #[error("an activation is already in progress: {0}")]
    Busy(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// How long a just-started activation process has to take its lock before the agent would
/// consider it dead and start another.
const ACTIVATOR_START_GRACE: Duration = Duration::from_secs(10);

/// A transient unit name no other activation uses: the time in milliseconds, this
/// process's id and random bits (two activations within one second used to collide).
fn activation_unit_name() -> String {
    let salt: String = yeet_client::random::<4>()
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect())
        .unwrap_or_default();
    format!(
        "yeet-activate-{}-{}-{salt}",
        yeet_proto::clock::unix_now_ms(),
        std::process::id()
    )
}

/// The path to run this agent's own binary by. If the binary was replaced or collected since
/// the agent started (`current_exe` then names a file that is gone), `/proc/<pid>/exe` still
/// reaches it while this process lives, also from a unit systemd starts.
fn own_executable() -> PathBuf {
    runnable_executable(std::env::current_exe().ok())
}

/// `current` when that file still exists, else this process's `/proc/<pid>/exe`.
fn runnable_executable(current: Option<PathBuf>) -> PathBuf {
    current
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(format!("/proc/{}/exe", std::process::id())))
}

/// Locks a mutex whose data stays valid even if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts activations: one at a time, each in a process of its own.
#[derive(Debug)]
pub struct Launcher {
    state: StateDir,
    /// Held while deciding whether an activation may start, and recording it.
    gate: Mutex<()>,
    /// When this agent last started an activation process.
    spawned_at: Mutex<Option<Instant>>,
}

impl Launcher {
    pub fn new(state: StateDir) -> Launcher {
        Launcher {
            state,
            gate: Mutex::new(()),
            spawned_at: Mutex::new(None),
        }
    }

    pub fn state(&self) -> &StateDir {
        &self.state
    }

    /// Records `st` and starts its process, unless an activation is already recorded (a
    /// running one, or a finished one whose report has not reached the server yet). A state
    /// that is already `Done` (refused before it began) is only recorded, for the report.
    pub fn start(&self, st: &ActivationState) -> Result<(), LaunchError> {
        let _gate = lock(&self.gate);
        if let Some(current) = self.state.load()? {
            // A forced switch that changed nothing (its secrets were not held, say) waits to
            // be reported to a server that is away: another forced switch may go ahead. Its
            // outcome stays the host's last result, unreported.
            if st.origin == Origin::Forced && current.is_forced_that_changed_nothing() {
                self.state.retire(&current)?;
            } else {
                return Err(LaunchError::Busy(format!(
                    "{} of {} ({})",
                    current.origin.as_str(),
                    current.store_path,
                    current.phase.as_str()
                )));
            }
        }
        self.state.clear()?;
        self.state.save(st)?;
        if st.phase != Phase::Done {
            self.spawn();
        }
        Ok(())
    }

    /// True for a moment after a process was started: it may not hold its lock yet, and
    /// is not dead.
    pub fn just_started(&self) -> bool {
        lock(&self.spawned_at).is_some_and(|t| t.elapsed() < ACTIVATOR_START_GRACE)
    }

    /// Starts `yeet-agent activate` outside this process's lifetime: a transient systemd unit
    /// where systemd runs, else a process in a process group of its own. The agent's
    /// supervisor (launchd, or a script) stops the agent's group when it restarts it; the
    /// activation is not in that group, and needs no `setsid` binary (macOS has none).
    pub fn spawn(&self) {
        let exe = own_executable();
        let log = self.state.open_log();
        let output = || log.as_ref().ok().and_then(|l| l.try_clone().ok());
        let under_systemd = Path::new("/run/systemd/system").exists();
        let mut cmd = if under_systemd {
            let mut c = Command::new("systemd-run");
            c.args([
                "--quiet",
                "--collect",
                "--service-type=exec",
                &format!("--unit={}", activation_unit_name()),
            ]);
            // A transient unit gets the service manager's environment, not ours: on NixOS
            // that PATH has no Nix. Hand over the PATH this agent was given.
            if let Some(path) = std::env::var_os("PATH").and_then(|p| p.into_string().ok()) {
                c.arg(format!("--setenv=PATH={path}"));
            }
            c.arg(&exe);
            c
        } else {
            let mut c = Command::new(&exe);
            std::os::unix::process::CommandExt::process_group(&mut c, 0);
            c
        };
        cmd.arg("activate").stdin(Stdio::null());
        if let (Some(out), Some(err)) = (output(), output()) {
            cmd.stdout(out).stderr(err);
        }
        let started = match cmd.spawn() {
            // systemd-run returns once the unit runs.
            Ok(mut child) if under_systemd => child
                .wait()
                .map_err(|e| e.to_string())
                .and_then(|s| s.success().then_some(()).ok_or_else(|| s.to_string())),
            // A detached process is reaped in the background whenever it ends, so that it
            // never lingers as a zombie.
            Ok(mut child) => {
                std::thread::spawn(move || child.wait());
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        };
        match started {
            Ok(()) => *lock(&self.spawned_at) = Some(Instant::now()),
            Err(e) => tracing::error!(error = %e, "the activation process could not be started"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_units_never_share_a_name() {
        let names: std::collections::HashSet<String> =
            (0..1000).map(|_| activation_unit_name()).collect();
        assert_eq!(names.len(), 1000);
        // systemd unit names: letters, digits and `-` are always valid.
        assert!(
            names
                .iter()
                .all(|n| n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        );
    }

    #[test]
    fn a_vanished_binary_is_still_reached_through_proc() {
        // What `current_exe` says after the binary was replaced or garbage-collected.
        let gone = PathBuf::from("/nix/store/gone-yeet-agent/bin/yeet-agent (deleted)");
        let fallback = runnable_executable(Some(gone));
        assert_eq!(
            fallback,
            PathBuf::from(format!("/proc/{}/exe", std::process::id()))
        );
        // The link resolves to this very binary, so it can be executed.
        assert_eq!(
            std::fs::canonicalize(&fallback).unwrap(),
            std::fs::canonicalize(std::env::current_exe().unwrap()).unwrap()
        );
        // A binary that is still there is used as it is.
        let here = std::env::current_exe().unwrap();
        assert_eq!(runnable_executable(Some(here.clone())), here);
        assert!(runnable_executable(None).exists());
    }
}
