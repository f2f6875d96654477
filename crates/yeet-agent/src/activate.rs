//! The activation process (`yeet-agent activate`). It runs detached from the agent (its own
//! session, or a transient systemd unit) because the switch it performs restarts the agent.
//! It holds the activation lock for its whole life and moves the state file through its
//! phases: fetch and verify, set the profile and switch, wait for the restarted agent to
//! confirm, and otherwise roll back profile and system. A process started on a state left
//! by a dead one resumes where that one stopped.

use std::fs::File;
use std::io::Write;
use std::time::Duration;
use yeet_proto::api::ActivationResult;

use crate::config::{ActivationMode, BOOTED_SYSTEM, NIX_CONF};
use crate::fetch::{self, FetchError};
use crate::state::{ActivationState, Phase, StateDir, StateError};
use crate::system;

pub use yeet_proto::clock::unix_now as now;

fn note(mut log: &File, line: &str) {
    let _ = writeln!(log, "yeet: {line}");
}

/// Runs (or resumes) the activation described in `dir`. Returns when it is done, or at once
/// when another live activation process holds the lock.
pub fn run(dir: &StateDir) -> Result<(), StateError> {
    let Some(_lock) = dir.try_lock()? else {
        return Ok(());
    };
    let Some(mut st) = dir.load()? else {
        return Ok(());
    };
    let log = dir.open_log()?;
    if st.phase == Phase::Done {
        return Ok(());
    }
    if matches!(st.phase, Phase::Pending | Phase::Fetching) {
        st.phase = Phase::Fetching;
        dir.save(&st)?;
        note(
            &log,
            &format!(
                "fetching {} from {}",
                st.store_path,
                if st.caches.is_empty() {
                    "the local store".into()
                } else {
                    st.caches.join(", ")
                }
            ),
        );
        if let Err(e) = fetch_verified(&st, &log) {
            let result = match &e {
                FetchError::Untrusted(_) => ActivationResult::Untrusted,
                FetchError::Failed(_) => ActivationResult::Failed,
            };
            return finish(dir, &log, st, result, e.to_string());
        }
        st.phase = Phase::Switching;
        dir.save(&st)?;
    }
    if st.phase == Phase::Switching {
        let action = st.mode;
        note(
            &log,
            &format!(
                "setting the system profile and running {}",
                system::describe(&st.store_path, action)
            ),
        );
        if let Err(reason) = system::platform_of(&st.store_path) {
            // Nothing was changed: there is nothing to roll back.
            return finish(dir, &log, st, ActivationResult::Failed, reason);
        }
        if let Err(reason) = system::set_profile(&st.store_path, &log)
            .and_then(|_| system::apply(&st.store_path, action, &log))
        {
            return roll_back(dir, &log, st, reason);
        }
        st.reboot_required = system::system_link(BOOTED_SYSTEM)
            .is_some_and(|booted| system::kernel_differs(&booted, &st.store_path));
        if st.mode == ActivationMode::Boot {
            return finish(
                dir,
                &log,
                st,
                ActivationResult::Confirmed,
                "boot entry written; the system is active after the next reboot".into(),
            );
        }
        st.phase = Phase::Switched;
        st.confirm_deadline = Some(now() + st.confirm_timeout_secs as i64);
        dir.save(&st)?;
        note(
            &log,
            &format!(
                "switched; waiting up to {}s for the agent to confirm",
                st.confirm_timeout_secs
            ),
        );
    }
    await_confirmation(dir, &log, st)
}

/// Phase::Switched: waits for the restarted agent to confirm (or reject) the new system,
/// and rolls back when the deadline passes.
fn await_confirmation(dir: &StateDir, log: &File, st: ActivationState) -> Result<(), StateError> {
    let deadline = st.confirm_deadline.unwrap_or_else(now);
    loop {
        if dir.is_confirmed() {
            note(log, "confirmed by the agent");
            let reason = if st.reboot_required {
                "switched; the kernel or initrd changed: reboot required".into()
            } else {
                "switched and confirmed".into()
            };
            return finish(dir, log, st, ActivationResult::Confirmed, reason);
        }
        if let Some(why) = dir.rejected() {
            return roll_back(dir, log, st, why);
        }
        if now() > deadline {
            let reason = format!(
                "not confirmed within {}s: the agent on the new system did not reach the server (or its health check did not pass)",
                st.confirm_timeout_secs
            );
            return roll_back(dir, log, st, reason);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Fetches the closure and checks it from this host's own store before anything of it runs.
fn fetch_verified(st: &ActivationState, log: &File) -> Result<(), FetchError> {
    // The agent checked these before recording the activation; the state file could be older.
    let path = fetch::check_store_path(&st.store_path).map_err(FetchError::Failed)?;
    let configured: Vec<nix_meta::PublicKey> = st
        .trusted_keys
        .iter()
        .filter_map(|k| k.parse().ok())
        .collect();
    let keys = fetch::trusted_keys(
        &configured,
        &std::fs::read_to_string(NIX_CONF).unwrap_or_default(),
    );
    if keys.is_empty() {
        return Err(FetchError::Untrusted(
            "this host trusts no binary-cache key: set trusted_keys in /etc/yeet/agent.toml".into(),
        ));
    }
    fetch::realise(&path, &st.caches, &keys, log)?;
    fetch::verify_closure(&path, &keys, log)
}

/// Goes back to the previous system (profile, then its switch script), then finishes.
fn roll_back(
    dir: &StateDir,
    log: &File,
    st: ActivationState,
    reason: String,
) -> Result<(), StateError> {
    note(log, &format!("rolling back: {reason}"));
    let Some(previous) = st.previous_system.clone() else {
        return finish(
            dir,
            log,
            st,
            ActivationResult::Failed,
            format!("{reason}; there is no previous system to roll back to"),
        );
    };
    let back = system::set_profile(&previous, log)
        .and_then(|_| system::apply(&previous, ActivationMode::Switch, log));
    match back {
        Ok(()) => finish(dir, log, st, ActivationResult::RolledBack, reason),
        Err(e) => finish(
            dir,
            log,
            st,
            ActivationResult::Failed,
            format!("{reason}; the rollback failed too: {e}"),
        ),
    }
}

fn finish(
    dir: &StateDir,
    log: &File,
    mut st: ActivationState,
    result: ActivationResult,
    reason: String,
) -> Result<(), StateError> {
    note(log, &format!("{}: {reason}", result.as_str()));
    st.phase = Phase::Done;
    st.result = Some(result);
    st.reason = reason;
    st.finished_at = Some(now());
    dir.save(&st)
}
