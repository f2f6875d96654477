//! The agent's main loop. Each round: register until approved (showing the verification
//! code), then either look after the activation in progress (resume it if its process died,
//! confirm it once the new system checked in and is healthy, report it once done), or hold a
//! long-poll check-in and start an activation when the server names a new system.
//! Unreachable servers and refusals are waited out with jittered backoff; the agent never
//! exits because the network is down.

use anyhow::{Context, Result};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use yeet_client::{Client, ClientError};
use yeet_proto::api::{
    Action, ActivationReport, AgentState, CheckinRequest, CheckinResponse, Facts, RegisterRequest,
    RegisterResponse,
};
use yeet_proto::{ErrorCode, Identity};

use crate::activate::now;
use crate::config::{
    BOOTED_SYSTEM, CURRENT_SYSTEM, Config, GENERATED_KEY, RUN_DIR, SSH_HOST_KEY, STATE_DIR,
};
use crate::secrets::{self, Held, SecretStore, SecretsError};
use crate::state::{ActivationState, Phase, ServerAccess, StateDir};
use crate::system::{self, system_link};

const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The activation log sent to the server is the tail of this many bytes.
const MAX_REPORTED_LOG: usize = 256 * 1024;

/// What `yeet-agent status` shows; rewritten by the agent every round.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub server: String,
    pub key_id: String,
    /// "registering", "pending-approval" or "approved".
    pub enrollment: String,
    /// The fleet's name for this host, once approved.
    pub host: Option<String>,
    /// The code to give the admin while waiting for approval, and when it expires.
    pub verification_code: Option<String>,
    pub code_expires_at: Option<i64>,
    pub current_system: Option<String>,
    /// The activation in progress, if any.
    pub activation: Option<String>,
    pub last_contact: Option<i64>,
    pub last_error: Option<String>,
}

/// The gid of the `yeet` group, whose members may read the agent's status.
fn yeet_group() -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("yeet:")?.split(':').nth(1)?.parse().ok())
}

pub fn status_path() -> PathBuf {
    Path::new(RUN_DIR).join("status.json")
}

/// The key to sign with, and its file: the configured one, else the SSH host key, else a
/// generated key. Secrets kept across reboots are encrypted to it.
pub fn load_identity(config: &Config) -> Result<(Identity, PathBuf)> {
    if let Some(k) = &config.key {
        return Ok((yeet_client::load_identity(k)?, k.clone()));
    }
    if Path::new(SSH_HOST_KEY).exists() {
        let path = PathBuf::from(SSH_HOST_KEY);
        return Ok((yeet_client::load_identity(&path)?, path));
    }
    let generated = PathBuf::from(GENERATED_KEY);
    if generated.exists() {
        return Ok((yeet_client::load_identity(&generated)?, generated));
    }
    tracing::info!(
        path = GENERATED_KEY,
        "no SSH host key; generating an agent key"
    );
    let identity = yeet_client::generate_identity_file(&generated, "yeet-agent")?;
    Ok((identity, generated))
}

pub fn hostname(config: &Config) -> String {
    config.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".into())
    })
}

pub fn facts() -> Facts {
    Facts {
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Sleeps `d` in small steps so that a stop request is noticed quickly.
fn sleep(d: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(100);
    let mut left = d;
    while !stop.load(Ordering::Relaxed) && !left.is_zero() {
        let s = left.min(step);
        std::thread::sleep(s);
        left -= s;
    }
}

/// Exponential backoff with ±25% jitter, so that a fleet does not return in lockstep.
fn backoff(attempt: u32, base: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(8)).min(MAX_BACKOFF);
    let jitter = yeet_client::random::<1>()
        .map(|b| b[0] as f64 / 255.0)
        .unwrap_or(0.5);
    exp.mul_f64(0.75 + jitter * 0.5)
}

/// Gzips and base64-encodes a log for the report.
fn pack_log(text: &str) -> String {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(enc.finish().unwrap_or_default())
}

struct Agent<'a> {
    config: &'a Config,
    client: Client,
    /// The file of the key the client signs with.
    key_path: PathBuf,
    state: StateDir,
    secrets: SecretStore,
    /// After a sync of secrets failed on this host (not on the network): the server's
    /// digest it was for, and when to try again. Meanwhile check-ins hold as usual.
    secrets_failed: Option<(String, Instant)>,
    status: Status,
    /// When this agent last started an activation process.
    spawned_at: Option<Instant>,
}

/// How long a sync of secrets that failed on this host waits before it is tried again.
const SECRETS_RETRY: Duration = Duration::from_secs(60);

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

/// Runs until `stop` is set.
pub fn run(config: &Config, stop: &AtomicBool) -> Result<()> {
    let (identity, key_path) = load_identity(config).context("cannot load the agent's key")?;
    tracing::info!(key = identity.public().key_id(), server = %config.server, "yeet-agent starting");
    let status = Status {
        server: config.server.clone(),
        key_id: identity.public().key_id().to_owned(),
        enrollment: "registering".into(),
        ..Default::default()
    };
    // Long-polls are held up to `long_poll`; the HTTP timeout must outlast them.
    let client = Client::new(
        &config.server,
        identity,
        config.ca_cert.as_deref(),
        config.long_poll + Duration::from_secs(30),
    )?;
    let _ = std::fs::create_dir_all(RUN_DIR).and_then(|_| {
        std::fs::write(
            Path::new(RUN_DIR).join("agent.pid"),
            std::process::id().to_string(),
        )
    });
    let secrets = SecretStore::system();
    // After a reboot: the secrets are back before anything talks to the server.
    match secrets.restore(&key_path) {
        Ok(true) => tracing::info!("secrets restored from {STATE_DIR}/secrets"),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot restore secrets; the next check-in fetches them")
        }
    }
    let mut agent = Agent {
        config,
        client,
        key_path,
        state: StateDir::new(STATE_DIR),
        secrets,
        secrets_failed: None,
        status,
        spawned_at: None,
    };
    let mut failures = 0u32;
    while !stop.load(Ordering::Relaxed) {
        let wait = match agent.step() {
            Ok(next) => {
                failures = 0;
                next
            }
            Err(e) => {
                failures += 1;
                let wait = backoff(failures, config.poll_interval.min(Duration::from_secs(5)));
                tracing::warn!(error = %e, retry_in = ?wait, "server request failed");
                agent.status.last_error = Some(e.to_string());
                wait
            }
        };
        agent.write_status();
        sleep(wait, stop);
    }
    Ok(())
}

impl Agent<'_> {
    /// Publishes the status file. It holds the verification code while the host waits for
    /// approval, so it is 0640: root, and the `yeet` group when the host has one.
    fn write_status(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        self.status.current_system = system_link(CURRENT_SYSTEM);
        let Ok(bytes) = serde_json::to_vec_pretty(&self.status) else {
            return;
        };
        let tmp = status_path().with_extension("tmp");
        let _ = std::fs::remove_file(&tmp);
        let written = File::options()
            .write(true)
            .create_new(true)
            .mode(0o640)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .and_then(|_| match yeet_group() {
                Some(gid) => std::os::unix::fs::chown(&tmp, None, Some(gid)),
                None => Ok(()),
            })
            .and_then(|_| std::fs::rename(&tmp, status_path()));
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot write {}", status_path().display());
        }
    }

    /// One round; returns how long to wait before the next.
    fn step(&mut self) -> Result<Duration, ClientError> {
        // Set again by this round if it fails or refuses something.
        self.status.last_error = None;
        // Register until approved; after that only check-ins travel, until the server stops
        // knowing the key (the host was removed) and enrollment starts over.
        let host = match self.status.host.clone() {
            Some(host) => host,
            None => match self.registered()? {
                Some(host) => host,
                None => return Ok(self.config.poll_interval),
            },
        };
        let round = match self.state.load() {
            Ok(Some(st)) => self.tend_activation(&host, st),
            Ok(None) => self.idle_checkin(),
            Err(e) => {
                // A corrupt state file must not wedge the host: drop it and say so.
                tracing::error!(error = %e, "discarding unreadable activation state");
                let _ = self.state.clear();
                Ok(Duration::ZERO)
            }
        };
        if round.as_ref().err().and_then(ClientError::api_code) == Some(ErrorCode::UnknownKey) {
            tracing::warn!(
                host,
                "the server no longer knows this host; registering again"
            );
            self.status.host = None;
            self.status.enrollment = "registering".into();
        }
        round
    }

    /// Registers (idempotent); `Some(host name)` once approved.
    fn registered(&mut self) -> Result<Option<String>, ClientError> {
        let req = RegisterRequest {
            public_key: self.client.identity().public().to_openssh(),
            hostname_hint: hostname(self.config),
            facts: facts(),
        };
        let resp = self.client.register(&req)?;
        self.status.last_contact = Some(now());
        match resp {
            RegisterResponse::Pending { code, expires_at } => {
                if self.status.verification_code.as_deref() != Some(code.as_str()) {
                    tracing::info!(code = %code, expires_at, "waiting for approval: on an admin machine run `yeet approve NAME {code}`");
                    println!("verification code: {code}");
                }
                self.status.enrollment = "pending-approval".into();
                self.status.verification_code = Some(code);
                self.status.code_expires_at = Some(expires_at);
                Ok(None)
            }
            RegisterResponse::Approved { host } => {
                if self.status.host.as_deref() != Some(host.as_str()) {
                    tracing::info!(host = %host, "approved");
                }
                self.status.enrollment = "approved".into();
                self.status.verification_code = None;
                self.status.code_expires_at = None;
                self.status.host = Some(host.clone());
                Ok(Some(host))
            }
        }
    }

    fn checkin(
        &mut self,
        state: AgentState,
        wait: Duration,
    ) -> Result<CheckinResponse, ClientError> {
        let req = CheckinRequest {
            current_system: system_link(CURRENT_SYSTEM),
            booted_system: system_link(BOOTED_SYSTEM),
            state,
            facts: facts(),
            wait_secs: wait.as_secs(),
            secrets_digest: self.held_secrets_digest(),
            detached: false,
        };
        let resp = self.client.checkin(&req)?;
        self.status.last_contact = Some(now());
        Ok(resp)
    }

    /// No activation in progress: hold a long-poll and start one when told to.
    fn idle_checkin(&mut self) -> Result<Duration, ClientError> {
        self.status.activation = None;
        // The long-poll may block for a minute: publish what we know first.
        self.write_status();
        let current = system_link(CURRENT_SYSTEM);
        // A kernel that differs from the booted one, or a profile whose default is not the
        // running system (a `boot`-mode activation), takes a reboot to apply.
        let new_kernel = system_link(BOOTED_SYSTEM)
            .zip(current.as_ref())
            .is_some_and(|(b, c)| system::kernel_differs(&b, c));
        let pending_boot =
            system::profile_system().is_some_and(|p| current.as_deref() != Some(p.as_str()));
        let state = if new_kernel || pending_boot {
            AgentState::RebootRequired
        } else {
            AgentState::Standby
        };
        // A system that changed its secrets' settings (after a reboot into a `boot`-mode
        // system, say) gets them before it waits.
        self.sync_secrets(None)?;
        let started = Instant::now();
        let resp = self.checkin(state, self.config.long_poll)?;
        self.sync_secrets(Some(&resp.secrets_digest))?;
        // The server's word is bounded: a huge interval must not silence the host.
        let next =
            Duration::from_secs(resp.next_checkin_secs).min(self.config.max_checkin_interval);
        match resp.action {
            Action::Switch {
                store_path,
                release_id,
                mut caches,
                embedded_cache,
            } => {
                if let Err(why) = crate::fetch::check_store_path(&store_path) {
                    // Nothing valid to report against; refuse and wait, so that a hostile
                    // answer cannot make the agent spin.
                    tracing::error!(offered = %store_path.escape_debug(), "{why}");
                    self.status.last_error = Some(why);
                    return Ok(self.config.poll_interval);
                }
                if embedded_cache {
                    caches.push(format!(
                        "{}/cache",
                        self.config.server.trim_end_matches('/')
                    ));
                }
                self.start_activation(store_path, release_id, caches);
                Ok(Duration::ZERO)
            }
            // A held check-in already waited; one answered at once (long-poll off) waits the interval.
            Action::None => Ok(next.saturating_sub(started.elapsed())),
        }
    }

    /// The digest of the secrets this host holds, for the check-in; `None` when the system
    /// asks for none and none are held (the server then never wakes it for secrets).
    fn held_secrets_digest(&self) -> Option<String> {
        if let Some((digest, until)) = &self.secrets_failed
            && Instant::now() < *until
        {
            return Some(digest.clone());
        }
        let held = self.secrets.held().ok().flatten();
        let wants = secrets::manifest_of(Path::new(CURRENT_SYSTEM)).is_ok_and(|m| !m.is_empty());
        match held {
            Some(h) if wants || !h.secrets.is_empty() => Some(h.digest),
            None if wants => Some(String::new()),
            _ => None,
        }
    }

    /// Brings the live secrets in line with the current system's manifest and, given the
    /// server's digest, with its grants. Network failures are the round's error (and its
    /// backoff); a failure on this host is logged and tried again after `SECRETS_RETRY`,
    /// without holding up check-ins, so that a new release can still fix it.
    fn sync_secrets(&mut self, server_digest: Option<&str>) -> Result<(), ClientError> {
        if self
            .secrets_failed
            .as_ref()
            .is_some_and(|(_, until)| Instant::now() < *until)
        {
            return Ok(());
        }
        match self.try_sync_secrets(server_digest) {
            Ok(()) => {
                self.secrets_failed = None;
                Ok(())
            }
            Err(SecretsError::Fetch(e)) => Err(e),
            Err(e) => {
                tracing::error!(error = %e, "cannot update this host's secrets; retrying in a minute");
                self.status.last_error = Some(e.to_string());
                let digest = server_digest.map(str::to_owned).unwrap_or_default();
                self.secrets_failed = Some((digest, Instant::now() + SECRETS_RETRY));
                Ok(())
            }
        }
    }

    fn try_sync_secrets(&mut self, server_digest: Option<&str>) -> Result<(), SecretsError> {
        let manifest = secrets::manifest_of(Path::new(CURRENT_SYSTEM))?;
        let held = self.secrets.held().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the record of held secrets");
            None
        });
        let live = self.secrets.live_generation();
        let up_to_date = match &held {
            Some(h) => {
                h.serves(&manifest)
                    && (h.secrets.is_empty() || live.as_deref() == Some(h.generation.as_str()))
                    && server_digest.is_none_or(|d| d == h.digest)
            }
            None => manifest.is_empty(),
        };
        if up_to_date {
            return Ok(());
        }
        let fetched = if manifest.is_empty() {
            secrets::Fetched {
                secrets: Default::default(),
                missing: Vec::new(),
                digest: server_digest.unwrap_or_default().to_owned(),
            }
        } else {
            secrets::fetch(&self.client, &manifest.names())?
        };
        let mut fresh = Held::from_fetch(&fetched, &manifest, String::new());
        if let Some(h) = held.as_ref().filter(|h| {
            h.secrets == fresh.secrets
                && (h.secrets.is_empty() || live.as_deref() == Some(h.generation.as_str()))
        }) {
            // Same versions, same settings: only the digest (or what is missing) moved.
            fresh.generation = h.generation.clone();
            return self.secrets.save_held(&fresh);
        }
        let generation = self.secrets.write_generation(&fetched, &manifest)?;
        self.secrets.activate(&generation, &manifest.secrets)?;
        fresh.generation = generation.clone();
        let before = held.map(|h| h.secrets).unwrap_or_default();
        self.secrets.unlink_dropped(&before, &manifest.secrets);
        self.secrets.prune_generations(&[&generation]);
        self.secrets
            .persist(&fresh, self.client.identity().public())?;
        // Units of secrets whose content changed or went away; not on a first delivery.
        let mut units = std::collections::BTreeSet::new();
        for (name, old) in &before {
            if fresh.secrets.get(name).map(|h| h.version) != Some(old.version) {
                units.extend(old.entry.restart_units.iter().cloned());
            }
        }
        let versions: Vec<String> = fresh
            .secrets
            .iter()
            .map(|(n, h)| format!("{n} v{}", h.version))
            .collect();
        tracing::info!(secrets = ?versions, missing = ?fresh.missing, at_ms = yeet_proto::clock::unix_now_ms(), "secrets updated");
        secrets::restart_units(&units);
        Ok(())
    }

    fn start_activation(&mut self, store_path: String, release_id: i64, caches: Vec<String>) {
        // `at_ms` lets benchmarks measure publish-to-activation latency from the log.
        tracing::info!(%store_path, release_id, at_ms = yeet_proto::clock::unix_now_ms(), "activating a new system");
        let refused =
            crate::fetch::check_cache_urls(&caches, &self.config.allowed_cache_schemes).err();
        let mut st = ActivationState {
            store_path,
            release_id: Some(release_id),
            caches,
            previous_system: system_link(CURRENT_SYSTEM),
            mode: self.config.activation_mode,
            trusted_keys: self
                .config
                .trusted_keys
                .iter()
                .map(ToString::to_string)
                .collect(),
            confirm_timeout_secs: self.config.confirm_timeout.as_secs(),
            server: Some(ServerAccess {
                url: self.config.server.clone(),
                key: self.key_path.clone(),
                ca_cert: self.config.ca_cert.clone(),
            }),
            secrets: None,
            started_at: now(),
            phase: Phase::Pending,
            confirm_deadline: None,
            result: None,
            reason: String::new(),
            reboot_required: false,
            finished_at: None,
        };
        if let Some(why) = &refused {
            // Refused before anything runs: recorded as done, so the next round reports it.
            tracing::warn!(reason = %why, "refusing the offered system");
            st.phase = Phase::Done;
            st.result = Some(yeet_proto::api::ActivationResult::Untrusted);
            st.reason = why.to_string();
            st.finished_at = Some(now());
        }
        if let Err(e) = self.state.clear().and_then(|_| self.state.save(&st)) {
            tracing::error!(error = %e, "cannot record the activation; not starting it");
            return;
        }
        if refused.is_none() {
            self.spawn_activator();
        }
    }

    /// Starts `yeet-agent activate` outside this process's lifetime: a transient systemd unit
    /// where systemd runs, else a process in a process group of its own. The agent's
    /// supervisor (launchd, or a script) stops the agent's group when it restarts it; the
    /// activation is not in that group, and needs no `setsid` binary (macOS has none).
    fn spawn_activator(&mut self) {
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
            Ok(()) => self.spawned_at = Some(Instant::now()),
            Err(e) => tracing::error!(error = %e, "the activation process could not be started"),
        }
    }

    /// An activation is recorded: report it when done, resume it when its process died,
    /// confirm it when the new system is up, and keep checking in meanwhile.
    fn tend_activation(
        &mut self,
        host: &str,
        st: ActivationState,
    ) -> Result<Duration, ClientError> {
        self.status.activation = Some(format!("{:?} {}", st.phase, st.store_path).to_lowercase());
        if st.phase == Phase::Done {
            return self.report(host, &st).map(|_| Duration::ZERO);
        }
        // A process started a moment ago may not hold its lock yet: it is not dead.
        let just_started = self
            .spawned_at
            .is_some_and(|t| t.elapsed() < ACTIVATOR_START_GRACE);
        let alive = just_started || self.state.activator_alive().unwrap_or(false);
        if !alive {
            tracing::warn!(phase = ?st.phase, "the activation process is gone; resuming the activation");
            let mut resumed = st.clone();
            if resumed.phase == Phase::Switched {
                // The system may have been down (a reboot): give the new system a full window.
                resumed.confirm_deadline = Some(now() + resumed.confirm_timeout_secs as i64);
                let _ = self.state.save(&resumed);
            }
            self.spawn_activator();
            return Ok(Duration::from_millis(500));
        }
        let running_new = system_link(CURRENT_SYSTEM).as_deref() == Some(st.store_path.as_str());
        self.checkin(AgentState::Updating, Duration::ZERO)?;
        if st.phase == Phase::Switched
            && running_new
            && !self.state.is_confirmed()
            && self.state.rejected().is_none()
        {
            // This check-in reached the server from the new system; now the health check.
            let log = self.state.open_log();
            let health = match (&self.config.health_check, &log) {
                (Some(cmd), Ok(log)) => system::health_check(cmd, log),
                (Some(_), Err(e)) => Err(format!("cannot open the activation log: {e}")),
                (None, _) => Ok(()),
            };
            let marked = match health {
                Ok(()) => self.state.mark_confirmed(),
                Err(why) => self.state.mark_rejected(&why),
            };
            if let Err(e) = marked {
                tracing::error!(error = %e, "cannot record the confirmation");
            }
        }
        Ok(Duration::from_millis(500))
    }

    fn report(&mut self, host: &str, st: &ActivationState) -> Result<(), ClientError> {
        let Some(result) = st.result else {
            return Ok(());
        };
        let report = ActivationReport {
            store_path: st.store_path.clone(),
            release_id: st.release_id,
            result,
            reason: st.reason.clone(),
            started_at: st.started_at,
            finished_at: st.finished_at.unwrap_or_else(now),
            reboot_required: st.reboot_required,
            log_gzip_base64: pack_log(&self.state.log_tail(MAX_REPORTED_LOG)),
        };
        self.client.report(&report)?;
        tracing::info!(host, result = result.as_str(), reason = %st.reason, "activation reported");
        if let Err(e) = self.state.clear() {
            tracing::error!(error = %e, "cannot clear the reported activation");
        }
        Ok(())
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
