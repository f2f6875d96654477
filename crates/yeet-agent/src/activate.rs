//! The activation process (`yeet-agent activate`). It runs detached from the agent (its own
//! session, or a transient systemd unit) because the switch it performs restarts the agent.
//! It holds the activation lock for its whole life and moves the state file through its
//! phases: fetch and verify, set the profile and switch, wait for the restarted agent to
//! confirm, and otherwise roll back profile and system. A process started on a state left
//! by a dead one resumes where that one stopped.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use yeet_proto::api::ActivationResult;

use crate::config::{ActivationMode, BOOTED_SYSTEM, NIX_CONF};
use crate::fetch::{self, FetchError};
use crate::secrets::{self, Fetched, Held, SecretStore, SecretsError};
use crate::state::{ActivationState, Origin, Phase, SecretsSwitch, StateDir, StateError};
use crate::system;

pub use yeet_proto::clock::unix_now as now;

/// Adds one of yeet's own lines to the activation log, stamped with the UTC time of day
/// (`yeet 14:03:07.215: ...`), so that the log shows where an activation's time went.
fn note(mut log: &File, line: &str) {
    let _ = writeln!(
        log,
        "yeet {}: {line}",
        time_of_day(yeet_proto::clock::unix_now_ms())
    );
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
pub fn time_of_day(unix_ms: i64) -> String {
    let ms = unix_ms.rem_euclid(86_400_000);
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
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
        if let Err(e) = fetch_verified(&st, &dir.fetched_root(), &log) {
            let result = match &e {
                FetchError::Untrusted(_) => ActivationResult::Untrusted,
                FetchError::Failed(_) => ActivationResult::Failed,
            };
            return finish(dir, &log, st, result, e.to_string());
        }
        if let Err(reason) = prepare_secrets(&mut st, &log) {
            // Nothing on the host changed yet.
            return finish(dir, &log, st, ActivationResult::Failed, reason);
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
        // The new system's services start with its secrets in place.
        if let Some(switch) = &st.secrets
            && let Err(e) =
                SecretStore::system().activate(&switch.held.generation, &entries(&switch.held))
        {
            return finish(
                dir,
                &log,
                st,
                ActivationResult::Failed,
                format!("cannot put the secrets in place: {e}"),
            );
        }
        if let Err(reason) = system::set_profile(&st.store_path, &log)
            .and_then(|_| system::apply(&st.store_path, action, &log))
        {
            return roll_back(dir, &log, st, reason);
        }
        if let Some(switch) = &st.secrets {
            // Users and groups the switch created now exist.
            SecretStore::system()
                .fix_owners(&switch.held.generation, &manifest_of_held(&switch.held));
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

/// Fetches the closure (rooted at `root`) and checks it from this host's own store before
/// anything of it runs.
fn fetch_verified(st: &ActivationState, root: &Path, log: &File) -> Result<(), FetchError> {
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
    fetch::realise(&path, &st.caches, &keys, root, log)?;
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
    revert_secrets(&st, log);
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
    settle_secrets(&st, result, log);
    st.phase = Phase::Done;
    st.result = Some(result);
    st.reason = reason;
    st.finished_at = Some(now());
    dir.save(&st)
}

/// The secrets entries a held generation was written with.
fn entries(held: &Held) -> std::collections::BTreeMap<String, yeet_proto::secrets::SecretEntry> {
    held.secrets
        .iter()
        .map(|(n, h)| (n.clone(), h.entry.clone()))
        .collect()
}

fn manifest_of_held(held: &Held) -> yeet_proto::secrets::Manifest {
    yeet_proto::secrets::Manifest {
        secrets: entries(held),
    }
}

/// A client that signs as the agent does, for the activation's own requests.
fn activation_client(st: &ActivationState) -> Result<yeet_client::Client, String> {
    let access = st.server.as_ref().ok_or(
        "this activation was recorded by an older agent that did not say how to reach the server; publish again",
    )?;
    let identity = yeet_client::load_identity(&access.key).map_err(|e| e.to_string())?;
    yeet_client::Client::new(
        &access.url,
        identity,
        access.ca_cert.as_deref(),
        Duration::from_secs(60),
    )
    .map_err(|e| e.to_string())
}

/// After the fetch, before anything changes: fetches every secret the new system names, in
/// one request, and writes them to a generation of their own (not live yet). Any secret
/// missing fails the activation here, naming them. In `boot` mode the secrets are only
/// checked: the agent writes them after the reboot, for the system that then runs.
fn prepare_secrets(st: &mut ActivationState, log: &File) -> Result<(), String> {
    let manifest = secrets::manifest_of(Path::new(&st.store_path)).map_err(|e| e.to_string())?;
    let store = SecretStore::system();
    let held = store.held().ok().flatten();
    if manifest.is_empty() && held.as_ref().is_none_or(|h| h.secrets.is_empty()) {
        return Ok(());
    }
    let fetched = if manifest.is_empty() {
        Fetched {
            secrets: Default::default(),
            missing: Vec::new(),
            digest: held.map(|h| h.digest).unwrap_or_default(),
        }
    } else if st.origin == Origin::Forced {
        // A forced switch asks no server (it may be unreachable): the secrets are the copies
        // this host keeps, encrypted to its key, of what it was granted.
        note(
            log,
            &format!(
                "secrets from this host's own copies (a forced switch asks no server): {}",
                manifest.names().join(", ")
            ),
        );
        let access = st
            .server
            .as_ref()
            .ok_or("this activation does not name the host's key")?;
        let held = store
            .open_held(&access.key, &manifest.names())
            .map_err(|e| e.to_string())?;
        if !held.missing.is_empty() {
            return Err(SecretsError::NotHeld(held.missing).to_string());
        }
        held
    } else {
        note(
            log,
            &format!("fetching secrets: {}", manifest.names().join(", ")),
        );
        let client = activation_client(st)?;
        secrets::fetch(&client, &manifest.names()).map_err(|e| e.to_string())?
    };
    if !fetched.missing.is_empty() {
        return Err(SecretsError::Missing(fetched.missing).to_string());
    }
    if st.mode == ActivationMode::Boot {
        note(
            log,
            "secrets are available; they are written after the reboot",
        );
        return Ok(());
    }
    let generation = store
        .write_generation(&fetched, &manifest)
        .map_err(|e| format!("cannot write the secrets: {e}"))?;
    let held = Held::from_fetch(&fetched, &manifest, generation);
    let versions: Vec<String> = held
        .secrets
        .iter()
        .map(|(n, h)| format!("{n} v{}", h.version))
        .collect();
    note(log, &format!("secrets written: {}", versions.join(", ")));
    st.secrets = Some(SecretsSwitch {
        previous: store.live_generation(),
        held,
    });
    Ok(())
}

/// Puts the previous generation of secrets back (the rollback's system needs its own).
fn revert_secrets(st: &ActivationState, log: &File) {
    let Some(switch) = &st.secrets else { return };
    let store = SecretStore::system();
    let previous = store.held().ok().flatten();
    let previous_entries = previous.as_ref().map(entries).unwrap_or_default();
    if let Err(e) = store.revert_to(switch.previous.as_deref(), &previous_entries) {
        note(log, &format!("cannot put the previous secrets back: {e}"));
    }
    store.unlink_dropped(&switch.held.secrets, &previous_entries);
}

/// When the activation ends: a confirmed switch keeps the new secrets (kept across reboots
/// too) and deletes the old generation; anything else deletes the new one.
fn settle_secrets(st: &ActivationState, result: ActivationResult, log: &File) {
    let Some(switch) = &st.secrets else { return };
    let store = SecretStore::system();
    let new = &switch.held.generation;
    if result != ActivationResult::Confirmed {
        if store.live_generation().as_deref() == Some(new.as_str()) {
            revert_secrets(st, log);
        }
        store.remove_generation(new);
        return;
    }
    if store.live_generation().as_deref() != Some(new.as_str()) {
        // /run was lost (a reboot): the agent fetches the secrets again.
        return;
    }
    let before = store
        .held()
        .ok()
        .flatten()
        .map(|h| h.secrets)
        .unwrap_or_default();
    store.unlink_dropped(&before, &entries(&switch.held));
    store.prune_generations(&[new]);
    let key = st
        .server
        .as_ref()
        .ok_or_else(|| "no key recorded".to_owned())
        .and_then(|a| yeet_client::load_identity(&a.key).map_err(|e| e.to_string()));
    match key {
        Ok(identity) => {
            if let Err(e) = store.persist(&switch.held, identity.public()) {
                note(
                    log,
                    &format!("cannot keep the secrets for the next boot: {e}"),
                );
            }
        }
        Err(e) => note(
            log,
            &format!("cannot keep the secrets for the next boot: {e}"),
        ),
    }
    // Units whose secrets changed content without their unit changing.
    let mut units = std::collections::BTreeSet::new();
    for (name, old) in &before {
        if switch.held.secrets.get(name).map(|h| h.version) != Some(old.version) {
            units.extend(old.entry.restart_units.iter().cloned());
        }
    }
    secrets::restart_units(&units);
}

#[cfg(test)]
mod tests {
    #[test]
    fn log_lines_are_stamped_with_the_utc_time_of_day() {
        assert_eq!(super::time_of_day(0), "00:00:00.000");
        // 2024-11-24T13:05:09.042Z
        assert_eq!(super::time_of_day(1_732_453_509_042), "13:05:09.042");
    }
}
