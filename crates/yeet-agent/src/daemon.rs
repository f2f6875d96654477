//! The agent's main loop. Each round: register until approved (showing the verification
//! code), then either look after the activation in progress (resume it if its process died,
//! confirm it once the new system checked in and is healthy, report it once done), or hold a
//! long-poll check-in and start an activation when the server names a new system.
//! Unreachable servers and refusals are waited out with jittered backoff; the agent never
//! exits because the network is down. The local interface (`varlink`) runs on a thread of
//! its own and shares `Shared` with this loop: the status it shows, and the signal that
//! makes the loop check in at once.

use anyhow::{Context, Result};
use base64::Engine;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use yeet_client::{Client, ClientError};
use yeet_proto::api::{
    Action, ActivationReport, ActivationResult, AgentState, CheckinRequest, CheckinResponse, Facts,
    RebootOrder, RebootPolicy, RegisterRequest, RegisterResponse,
};
use yeet_proto::{ErrorCode, Identity};

use crate::activate::now;
use crate::config::{
    BOOTED_SYSTEM, CURRENT_SYSTEM, Config, GENERATED_KEY, RUN_DIR, SSH_HOST_KEY, STATE_DIR,
};
use crate::launch::{LaunchError, Launcher, lock};
use crate::reboot::{RebootFiles, RebootOutcome, RebootRecord, RebootStatus};
use crate::secrets::{self, Held, SecretStore, SecretsError};
use crate::state::{ActivationState, Origin, Phase, ServerAccess, StateDir};
use crate::system::{self, system_link};
use crate::varlink::{self, LocalDetachment, Status};

const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// The activation log sent to the server is the tail of this many bytes.
const MAX_REPORTED_LOG: usize = 256 * 1024;

/// What the main loop and the local interface share.
pub struct Shared {
    status: Mutex<Status>,
    /// The detachment as the server last said, through a check-in or a Detach/Attach call
    /// (whichever came last); kept apart from `status` so that neither side overwrites
    /// the other's newer word with an older copy.
    detached: Mutex<Option<LocalDetachment>>,
    signals: Mutex<Signals>,
    wake: Condvar,
}

/// What wakes the loop, under one lock with its condition variable so that no wake-up is
/// lost between looking and waiting.
#[derive(Default)]
struct Signals {
    /// Set by `check_now`; the loop takes it when it wakes.
    check_now: bool,
    /// Bumped when a held check-in's answer arrives.
    answers: u64,
}

impl Shared {
    fn new(status: Status) -> Shared {
        Shared {
            status: Mutex::new(status),
            detached: Mutex::new(None),
            signals: Mutex::new(Signals::default()),
            wake: Condvar::new(),
        }
    }

    /// A copy of the status as the loop last published it, with the detachment.
    pub fn status(&self) -> Status {
        let mut status = lock(&self.status).clone();
        status.detached = self.detached();
        status
    }

    pub fn detached(&self) -> Option<LocalDetachment> {
        lock(&self.detached).clone()
    }

    fn publish(&self, status: &Status) {
        *lock(&self.status) = status.clone();
    }

    /// Records the server's latest word on the detachment.
    pub fn set_detached(&self, detached: Option<LocalDetachment>) {
        *lock(&self.detached) = detached;
    }

    /// Makes the loop check in now: it stops sleeping, or drops the check-in it holds and
    /// makes a fresh one.
    pub fn check_now(&self) {
        lock(&self.signals).check_now = true;
        self.wake.notify_all();
    }

    fn take_check_now(&self) -> bool {
        std::mem::take(&mut lock(&self.signals).check_now)
    }

    /// How many held check-ins have been answered; pass it to `wait`.
    fn answers(&self) -> u64 {
        lock(&self.signals).answers
    }

    /// Waits up to `d`, or until `check_now` is called or an answer arrives after `seen`.
    fn wait(&self, seen: u64, d: Duration) {
        let signals = lock(&self.signals);
        if !signals.check_now && signals.answers == seen {
            let _ = self.wake.wait_timeout(signals, d);
        }
    }

    fn answered(&self) {
        lock(&self.signals).answers += 1;
        self.wake.notify_all();
    }
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

pub fn facts(config: &Config) -> Facts {
    Facts {
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        agent_version: env!("CARGO_PKG_VERSION").into(),
        hardware_uuid: hardware_uuid().to_owned(),
        trust_digest: trust_digest(config),
        os_version: os_version(),
        kernel: read_line("/proc/sys/kernel/osrelease"),
        booted_at: booted_at(),
        suggested_tags: config.suggested_tags.clone(),
    }
}

/// The running system's NixOS (or nix-darwin) version; on other machines the
/// distribution's name and version from os-release. Read at each check-in: a switch
/// changes it.
fn os_version() -> String {
    for file in ["nixos-version", "darwin-version"] {
        let version = read_line(&format!("{CURRENT_SYSTEM}/{file}"));
        if !version.is_empty() {
            let os = if file == "nixos-version" {
                "NixOS"
            } else {
                "nix-darwin"
            };
            return format!("{os} {version}");
        }
    }
    let os_release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim().trim_matches('"').to_owned())
        .unwrap_or_default()
}

/// How many units systemd counts as failed, where systemd is the init system; `None`
/// elsewhere (nix-darwin, containers without systemd) or when systemctl cannot answer.
/// Asked at each check-in: a unit may fail at any time, and a rollout's health gate
/// watches for it during its bake.
fn failed_units() -> Option<u32> {
    if !std::path::Path::new("/run/systemd/system").is_dir() {
        return None;
    }
    let out = std::process::Command::new("systemctl")
        .args(["show", "--property=NFailedUnits", "--value"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// When the machine booted (Unix seconds), from the kernel's `btime` (Linux).
fn booted_at() -> Option<i64> {
    std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

/// A small file's first line, trimmed; empty when it cannot be read.
fn read_line(path: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_owned()))
        .unwrap_or_default()
}

/// A digest of the binary-cache keys this host trusts now (its config's and nix.conf's,
/// in any order): the server offers a system this host refused as untrusted again once it
/// changes. nix.conf is read each time, so that a fixed nix.conf counts at once.
fn trust_digest(config: &Config) -> String {
    let nix_conf = std::fs::read_to_string(crate::config::NIX_CONF).unwrap_or_default();
    let mut keys: Vec<String> = crate::fetch::trusted_keys(&config.trusted_keys, &nix_conf)
        .iter()
        .map(ToString::to_string)
        .collect();
    keys.sort();
    yeet_proto::signing::body_digest(keys.join("\n").as_bytes())
}

/// The DMI product UUID (root may read it), as osquery reports it: upper case. Empty on
/// machines without one (containers, most ARM boards) or when it cannot be read. Read
/// once: it cannot change while the machine runs, and facts go with every check-in.
fn hardware_uuid() -> &'static str {
    static UUID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    UUID.get_or_init(|| {
        std::fs::read_to_string("/sys/class/dmi/id/product_uuid")
            .map(|s| s.trim().to_ascii_uppercase())
            .unwrap_or_default()
    })
}

/// Sleeps `d`, waking early for a stop request (checked every 100 ms) or `check_now`.
fn sleep(d: Duration, stop: &AtomicBool, shared: &Shared) {
    let until = Instant::now() + d;
    while !stop.load(Ordering::Relaxed) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() || shared.take_check_now() {
            return;
        }
        shared.wait(shared.answers(), left.min(Duration::from_millis(100)));
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

/// Settles how a reboot ended, once: stored (and this boot's marker dropped) before the
/// report, which may have to wait for the server, so that a retried report says the same
/// and a failed reboot is not tried again meanwhile.
fn decide(
    files: &RebootFiles,
    record: &mut RebootRecord,
    result: ActivationResult,
    reason: String,
) {
    record.outcome = Some(RebootOutcome {
        result,
        reason,
        finished_at: now(),
    });
    files.clear();
    if let Err(e) = files.save(record, false) {
        tracing::error!(error = %e, "cannot record the reboot's outcome");
    }
}

/// Gzips and base64-encodes a log for the report.
fn pack_log(text: &str) -> String {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let _ = enc.write_all(text.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(enc.finish().unwrap_or_default())
}

struct Agent<'a> {
    config: &'a Config,
    client: Arc<Client>,
    /// The file of the key the client signs with.
    key_path: PathBuf,
    state: StateDir,
    launcher: Arc<Launcher>,
    secrets: SecretStore,
    /// After a sync of secrets failed on this host (not on the network): the server's
    /// digest it was for, and when to try again. Meanwhile check-ins hold as usual.
    secrets_failed: Option<(String, Instant)>,
    /// This loop's status, published to `shared` after every change that matters.
    status: Status,
    shared: Arc<Shared>,
    /// Held check-ins answered in under `REPOLL_GAP` with nothing new, in a row (see
    /// `idle_checkin`).
    quick_answers: u32,
}

/// A new activation with this agent's settings, for the system the caller fills in.
pub fn new_activation(config: &Config, key_path: &Path) -> ActivationState {
    ActivationState {
        store_path: String::new(),
        release_id: None,
        caches: Vec::new(),
        previous_system: system_link(CURRENT_SYSTEM),
        mode: config.activation_mode,
        trusted_keys: config
            .trusted_keys
            .iter()
            .map(ToString::to_string)
            .collect(),
        confirm_timeout_secs: config.confirm_timeout.as_secs(),
        server: Some(ServerAccess {
            url: config.server.clone(),
            key: key_path.to_owned(),
            ca_cert: config.ca_cert.clone(),
        }),
        secrets: None,
        started_at: now(),
        phase: Phase::Pending,
        confirm_deadline: None,
        result: None,
        reason: String::new(),
        reboot_required: false,
        finished_at: None,
        origin: Origin::Server,
        requested_by: None,
    }
}

/// How long a sync of secrets that failed on this host waits before it is tried again.
const SECRETS_RETRY: Duration = Duration::from_secs(60);

/// After a held check-in is answered with nothing to do (it was woken by a rotated or
/// revoked secret, a grant, a policy change), the next one starts this soon after the last
/// began: the new long-poll is the wait, so a release or the next change is seen at once.
const REPOLL_GAP: Duration = Duration::from_millis(250);
/// A server that answers held check-ins at once, with nothing new, this many times in a row
/// (it does not hold them, or keeps waking them for nothing) is polled at its interval
/// instead, so it cannot make the agent spin.
const MAX_QUICK_ANSWERS: u32 = 3;

/// Runs until `stop` is set.
pub fn run(config: &Config, stop: &AtomicBool) -> Result<()> {
    let (identity, key_path) = load_identity(config).context("cannot load the agent's key")?;
    tracing::info!(key = identity.public().key_id(), server = %config.server, "yeet-agent starting");
    let status = Status {
        server: config.server.clone(),
        key_id: identity.public().key_id().to_owned(),
        enrollment: "registering".into(),
        state: "registering".into(),
        attachment: "attached".into(),
        ..Default::default()
    };
    // Long-polls are held up to `long_poll`; the HTTP timeout must outlast them.
    let client = Arc::new(Client::new(
        &config.server,
        identity,
        config.ca_cert.as_deref(),
        config.long_poll + Duration::from_secs(30),
    )?);
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
    let shared = Arc::new(Shared::new(status.clone()));
    let launcher = Arc::new(Launcher::new(StateDir::new(STATE_DIR)));
    let local = Arc::new(varlink::Local {
        last_check_now: Mutex::new(None),
        shared: shared.clone(),
        launcher: launcher.clone(),
        client: client.clone(),
        config: config.clone(),
        key_path: key_path.clone(),
    });
    // The host keeps working without its local interface; people at it are told why.
    if let Err(e) = varlink::serve(local, Path::new(varlink::SOCKET)) {
        tracing::error!(error = %e, socket = varlink::SOCKET, "cannot serve the local interface");
    }
    let mut agent = Agent {
        config,
        client,
        key_path,
        state: StateDir::new(STATE_DIR),
        launcher,
        secrets,
        secrets_failed: None,
        status,
        shared: shared.clone(),
        quick_answers: 0,
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
        agent.publish_status();
        sleep(wait, stop, &shared);
    }
    Ok(())
}

/// Where registration stands after one request.
enum Enrollment {
    Approved(String),
    /// Not yet: register again after `next_in`.
    Pending {
        next_in: Duration,
    },
}

/// How soon a host registers again after showing a new code: past the server's shortest
/// re-registration interval (500 ms by default), and soon enough that the held request is
/// waiting by the time an admin has typed the code.
const PENDING_RETRY: Duration = Duration::from_secs(1);

impl Agent<'_> {
    /// Shows the loop's status on the local interface.
    fn publish_status(&self) {
        self.shared.publish(&self.status);
    }

    /// One round; returns how long to wait before the next.
    fn step(&mut self) -> Result<Duration, ClientError> {
        // Set again by this round if it fails or refuses something.
        self.status.last_error = None;
        // A switch chosen at the machine goes on before anything asks the server: after the
        // switch restarted the agent, the server may be away (a registration would hang
        // until its timeout, past the confirm window). It is reported once the server is back.
        if self.status.host.is_none()
            && let Ok(Some(st)) = self.state.load()
            && st.origin.confirmed_by_host()
            && st.phase != Phase::Done
        {
            return self.tend_activation("", st);
        }
        // Register until approved; after that only check-ins travel, until the server stops
        // knowing the key (the host was removed) and enrollment starts over.
        let host = match self.status.host.clone() {
            Some(host) => host,
            None => match self.registered()? {
                Enrollment::Approved(host) => host,
                Enrollment::Pending { next_in } => return Ok(next_in),
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
            self.status.state = "registering".into();
        }
        round
    }

    /// Registers (idempotent): approved, with the host's name, or still pending.
    fn registered(&mut self) -> Result<Enrollment, ClientError> {
        // Once the code is shown, the server may hold the request until an admin approves
        // it, so approval reaches the host at once rather than at the next poll.
        let wait = match self.status.verification_code {
            Some(_) => self.config.long_poll,
            None => Duration::ZERO,
        };
        let req = RegisterRequest {
            public_key: self.client.identity().public().to_openssh(),
            hostname_hint: hostname(self.config),
            facts: facts(self.config),
            wait_secs: wait.as_secs(),
        };
        let asked = std::time::Instant::now();
        let resp = self.client.register(&req)?;
        self.status.last_checkin = Some(now());
        match resp {
            RegisterResponse::Pending { code, expires_at } => {
                let new_code = self.status.verification_code.as_deref() != Some(code.as_str());
                if new_code {
                    tracing::info!(code = %code, expires_at, "waiting for approval: on an admin machine run `yeet approve NAME {code}`");
                    println!("verification code: {code}");
                }
                self.status.enrollment = "pending-approval".into();
                self.status.state = "pending-approval".into();
                self.status.verification_code = Some(code);
                self.status.code_expires_at = Some(expires_at);
                // Ask again soon after showing a new code (that request is the one the
                // server holds) and at once after a held one; a server that answered a
                // shown code at once (one from before held registrations) every interval.
                let held = !wait.is_zero() && asked.elapsed() >= wait / 2;
                Ok(Enrollment::Pending {
                    next_in: match (new_code, held) {
                        (true, _) => PENDING_RETRY,
                        (false, true) => Duration::ZERO,
                        (false, false) => self.config.poll_interval,
                    },
                })
            }
            RegisterResponse::Approved { host } => {
                if self.status.host.as_deref() != Some(host.as_str()) {
                    tracing::info!(host = %host, "approved");
                }
                self.status.enrollment = "approved".into();
                self.status.verification_code = None;
                self.status.code_expires_at = None;
                self.status.host = Some(host.clone());
                Ok(Enrollment::Approved(host))
            }
        }
    }

    /// A check-in the server may hold up to `wait`. `check_now` drops a held one: `None`,
    /// and the next round makes a fresh one at once (the server lets go of the older: one
    /// held check-in per host), or first tends an activation started meanwhile.
    fn checkin(
        &mut self,
        state: AgentState,
        wait: Duration,
    ) -> Result<Option<CheckinResponse>, ClientError> {
        self.status.state = state.as_str().to_owned();
        self.publish_status();
        let req = CheckinRequest {
            current_system: system_link(CURRENT_SYSTEM),
            booted_system: system_link(BOOTED_SYSTEM),
            state,
            facts: facts(self.config),
            wait_secs: wait.as_secs(),
            secrets_digest: self.held_secrets_digest(),
            detached: self.shared.detached().is_some(),
            failed_units: failed_units(),
            reboot_policy: self.config.reboot,
        };
        let Some(resp) = self.held_checkin(&req)? else {
            return Ok(None);
        };
        self.status.last_checkin = Some(now());
        self.status.desired_system = resp.desired_system.clone();
        self.shared
            .set_detached(resp.detached.as_ref().map(|d| LocalDetachment {
                since: d.since,
                user: d.user.clone(),
                reason: d.reason.clone(),
            }));
        self.publish_status();
        Ok(Some(resp))
    }

    /// Sends the check-in from a helper thread and waits for its answer or `check_now`;
    /// `None` when `check_now` came first (the helper's answer is then dropped).
    fn held_checkin(&self, req: &CheckinRequest) -> Result<Option<CheckinResponse>, ClientError> {
        if req.wait_secs == 0 {
            return self.client.checkin(req).map(Some);
        }
        let slot = Arc::new(Mutex::new(None));
        let (client, shared, out, req) = (
            self.client.clone(),
            self.shared.clone(),
            slot.clone(),
            req.clone(),
        );
        std::thread::spawn(move || {
            let answer = client.checkin(&req);
            *lock(&out) = Some(answer);
            shared.answered();
        });
        loop {
            let seen = self.shared.answers();
            if let Some(answer) = lock(&slot).take() {
                return answer.map(Some);
            }
            if self.shared.take_check_now() {
                return Ok(None);
            }
            self.shared.wait(seen, Duration::from_secs(1));
        }
    }

    /// No activation in progress: hold a long-poll and start one when told to.
    fn idle_checkin(&mut self) -> Result<Duration, ClientError> {
        // A reboot this agent started comes first: the machine is going down, or it came
        // up and what it runs is reported.
        if let Some(wait) = self.tend_reboot()? {
            return Ok(wait);
        }
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
        let held_digest = self.held_secrets_digest();
        let Some(resp) = self.checkin(state, self.config.long_poll)? else {
            return Ok(Duration::ZERO);
        };
        // An answer that brought this host something new is never "spinning". A host that
        // holds no secrets (no digest sent) is never woken for them, so nothing is news.
        let brought_news = held_digest
            .as_deref()
            .is_some_and(|held| held != resp.secrets_digest);
        self.sync_secrets(Some(&resp.secrets_digest))?;
        // The server's word is bounded: a huge interval must not silence the host.
        let next =
            Duration::from_secs(resp.next_checkin_secs).min(self.config.max_checkin_interval);
        // Only a host that needs a reboot takes one: a server cannot reboot hosts at will.
        if let (Action::None, Some(order), AgentState::RebootRequired) =
            (&resp.action, &resp.reboot, state)
        {
            return self.reboot(order, resp.desired_system.as_deref(), next);
        }
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
            // A held check-in already waited, so the next one starts at once; one answered
            // at once (long-poll off, or a server that does not hold) waits the interval.
            Action::None => {
                let elapsed = started.elapsed();
                self.quick_answers = if elapsed < REPOLL_GAP && !brought_news {
                    self.quick_answers + 1
                } else {
                    0
                };
                if self.config.long_poll.is_zero() || self.quick_answers >= MAX_QUICK_ANSWERS {
                    Ok(next.saturating_sub(elapsed))
                } else {
                    Ok(REPOLL_GAP.saturating_sub(elapsed))
                }
            }
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

    /// The server's order to reboot now: record what the boot should bring up, then
    /// `systemctl reboot`. Refused when this host's config says `reboot = "never"`, when
    /// the profile has no valid default, and when a reboot into the same system already
    /// failed (people look at it first); each refusal waits `next` before asking again.
    fn reboot(
        &mut self,
        order: &RebootOrder,
        desired: Option<&str>,
        next: Duration,
    ) -> Result<Duration, ClientError> {
        // The server's words reach the log, the local status and the report: short and
        // printable, whatever it sends.
        let order_reason = yeet_proto::text::clean_line(&order.reason, 200);
        let refuse = |agent: &mut Self, why: String| {
            tracing::warn!(reason = %order_reason, "not rebooting: {why}");
            agent.status.last_error = Some(format!("not rebooting: {why}"));
            Ok(next)
        };
        if self.config.reboot == Some(RebootPolicy::Never) {
            return refuse(self, "this host's config says `reboot = \"never\"`".into());
        }
        let Some(expected) = system::profile_system() else {
            return refuse(self, "the system profile has no valid default".into());
        };
        let files = RebootFiles::system();
        if files.load().is_some_and(|r| r.failed_into(&expected)) {
            return refuse(
                self,
                format!(
                    "a reboot into {expected} did not come up on it; reboot by hand once it is fixed"
                ),
            );
        }
        let mut record = RebootRecord {
            // The report after the boot counts for the release only if it names this system.
            release_id: order
                .release_id
                .filter(|_| desired == Some(expected.as_str())),
            expected_system: expected,
            previous_system: system_link(CURRENT_SYSTEM),
            requested_at: now(),
            reason: order_reason.clone(),
            outcome: None,
            reported: false,
        };
        if let Err(e) = files.save(&record, true) {
            files.clear();
            return refuse(self, format!("cannot record the reboot: {e}"));
        }
        tracing::warn!(reason = %order_reason, system = %record.expected_system, at_ms = yeet_proto::clock::unix_now_ms(), "rebooting");
        self.status.state = "rebooting".into();
        self.publish_status();
        // systemd's clean reboot where systemd runs; elsewhere (nix-darwin) `shutdown -r`.
        let command: &[&str] = if Path::new("/run/systemd/system").is_dir() {
            &["systemctl", "reboot"]
        } else {
            &["shutdown", "-r", "now"]
        };
        let ran = std::process::Command::new(command[0])
            .args(&command[1..])
            .stdin(std::process::Stdio::null())
            .output();
        match ran {
            Ok(out) if out.status.success() => Ok(Duration::from_secs(5)),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                    Err(e) => e.to_string(),
                };
                let reason = format!(
                    "asked to reboot ({}), but `{}` failed: {why}",
                    order_reason,
                    command.join(" ")
                );
                decide(&files, &mut record, ActivationResult::Failed, reason);
                self.report_reboot(record)?;
                Ok(next)
            }
        }
    }

    /// A reboot this agent recorded: `Some(wait)` while the machine is going down;
    /// otherwise reports, once, what came up (or that it never went down).
    fn tend_reboot(&mut self) -> Result<Option<Duration>, ClientError> {
        let files = RebootFiles::system();
        let Some(mut record) = files.load().filter(|r| !r.reported) else {
            return Ok(None);
        };
        if record.outcome.is_none() {
            let booted = system_link(BOOTED_SYSTEM);
            let (result, reason) = match files.status(&record, booted.as_deref(), now()) {
                RebootStatus::Going => return Ok(Some(Duration::from_secs(5))),
                RebootStatus::Booted { result, reason } => (result, reason),
                RebootStatus::DidNotHappen { reason } => (ActivationResult::Failed, reason),
            };
            decide(&files, &mut record, result, reason);
        }
        self.report_reboot(record)?;
        Ok(None)
    }

    /// Reports a decided reboot as an activation of the system it was for. A confirmed
    /// one is then forgotten; a failed one stays, so that the host does not reboot into
    /// that system again.
    fn report_reboot(&mut self, mut record: RebootRecord) -> Result<(), ClientError> {
        let Some(outcome) = record.outcome.clone() else {
            return Ok(());
        };
        let report = ActivationReport {
            store_path: record.expected_system.clone(),
            release_id: record.release_id,
            result: outcome.result,
            reason: outcome.reason.clone(),
            started_at: record.requested_at,
            finished_at: outcome.finished_at,
            reboot_required: false,
            log_gzip_base64: pack_log(&format!("{}\n", outcome.reason)),
        };
        self.client.report(&report)?;
        tracing::info!(result = outcome.result.as_str(), reason = %outcome.reason, at_ms = yeet_proto::clock::unix_now_ms(), "reboot reported");
        let files = RebootFiles::system();
        if outcome.result == ActivationResult::Confirmed {
            files.clear();
        } else {
            record.reported = true;
            if let Err(e) = files.save(&record, false) {
                tracing::error!(error = %e, "cannot record that the reboot was reported");
            }
        }
        Ok(())
    }

    fn start_activation(&mut self, store_path: String, release_id: i64, caches: Vec<String>) {
        // `at_ms` lets benchmarks measure publish-to-activation latency from the log.
        tracing::info!(%store_path, release_id, at_ms = yeet_proto::clock::unix_now_ms(), "activating a new system");
        let refused =
            crate::fetch::check_cache_urls(&caches, &self.config.allowed_cache_schemes).err();
        let mut st = new_activation(self.config, &self.key_path);
        st.store_path = store_path;
        st.release_id = Some(release_id);
        st.caches = caches;
        if let Some(why) = &refused {
            // Refused before anything runs: recorded as done, so the next round reports it.
            tracing::warn!(reason = %why, "refusing the offered system");
            st.phase = Phase::Done;
            st.result = Some(yeet_proto::api::ActivationResult::Untrusted);
            st.reason = why.to_string();
            st.finished_at = Some(now());
        }
        match self.launcher.start(&st) {
            Ok(()) => {}
            // A local switch began in between; the server offers this again afterwards.
            Err(LaunchError::Busy(what)) => {
                tracing::info!(busy = %what, "not starting the release's system now")
            }
            Err(e) => tracing::error!(error = %e, "cannot record the activation; not starting it"),
        }
    }

    /// An activation is recorded: report it when done, resume it when its process died,
    /// confirm it when the new system is up, and keep checking in meanwhile.
    fn tend_activation(
        &mut self,
        host: &str,
        st: ActivationState,
    ) -> Result<Duration, ClientError> {
        if st.phase == Phase::Done {
            return self.report(host, &st).map(|_| Duration::ZERO);
        }
        // A process started a moment ago may not hold its lock yet: it is not dead.
        let alive = self.launcher.just_started() || self.state.activator_alive().unwrap_or(false);
        if !alive {
            tracing::warn!(phase = ?st.phase, "the activation process is gone; resuming the activation");
            let mut resumed = st.clone();
            if resumed.phase == Phase::Switched {
                // The system may have been down (a reboot): give the new system a full window.
                resumed.confirm_deadline = Some(now() + resumed.confirm_timeout_secs as i64);
                let _ = self.state.save(&resumed);
            }
            self.launcher.spawn();
            return Ok(Duration::from_millis(500));
        }
        let running_new = system_link(CURRENT_SYSTEM).as_deref() == Some(st.store_path.as_str());
        // A release's switch is confirmed only once the new system reaches the server. A
        // switch chosen at the machine is confirmed by the health check alone, and no request
        // to a server that may be away (and hang) holds it up: a detached host tells the
        // server afterwards, if it is there; a forced switch is for a host cut off from it.
        if !st.origin.confirmed_by_host() {
            self.checkin(AgentState::Updating, Duration::ZERO)?;
        }
        if st.phase == Phase::Switched
            && running_new
            && !self.state.is_confirmed()
            && self.state.rejected().is_none()
        {
            // This check-in reached the server from the new system (or, forced, needs not);
            // now the health check.
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
        if st.origin == Origin::Detached
            && !host.is_empty()
            && let Err(e) = self.checkin(AgentState::Updating, Duration::ZERO)
        {
            tracing::info!(error = %e, "the server did not hear of the local switch yet");
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
        tracing::info!(host, result = result.as_str(), reason = %st.reason, origin = st.origin.as_str(), at_ms = yeet_proto::clock::unix_now_ms(), "activation reported");
        if let Err(e) = self.state.retire(st) {
            tracing::error!(error = %e, "cannot clear the reported activation");
        }
        Ok(())
    }
}
