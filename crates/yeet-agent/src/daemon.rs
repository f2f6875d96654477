//! The agent's main loop: register until approved (showing the verification code), then
//! check in on the interval the server asks for. Unreachable servers and refusals are
//! waited out with jittered backoff; the agent never exits because the network is down.

use anyhow::{Context, Result};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use yeet_client::{Client, ClientError};
use yeet_proto::Identity;
use yeet_proto::api::{
    Action, CheckinRequest, CheckinResponse, Facts, RegisterRequest, RegisterResponse, paths,
};

use crate::config::{Config, GENERATED_KEY, SSH_HOST_KEY};

const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The key to sign with: the configured one, else the SSH host key, else a generated key.
pub fn load_identity(config: &Config) -> Result<Identity> {
    if let Some(k) = &config.key {
        return Ok(yeet_client::load_identity(k)?);
    }
    if Path::new(SSH_HOST_KEY).exists() {
        return Ok(yeet_client::load_identity(Path::new(SSH_HOST_KEY))?);
    }
    let generated = Path::new(GENERATED_KEY);
    if generated.exists() {
        return Ok(yeet_client::load_identity(generated)?);
    }
    tracing::info!(
        path = GENERATED_KEY,
        "no SSH host key; generating an agent key"
    );
    Ok(yeet_client::generate_identity_file(
        generated,
        "yeet-agent",
    )?)
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

/// The store path a profile symlink such as `/run/current-system` points at.
pub fn system_link(link: &str) -> Option<String> {
    let target = std::fs::read_link(link).ok()?;
    let s = target.to_str()?.to_owned();
    s.parse::<nix_meta::StorePath>().ok().map(|_| s)
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

/// Runs until `stop` is set.
pub fn run(config: &Config, stop: &AtomicBool) -> Result<()> {
    let identity = load_identity(config).context("cannot load the agent's key")?;
    tracing::info!(key = identity.public().key_id(), server = %config.server, "yeet-agent starting");
    let client = Client::new(
        &config.server,
        identity,
        config.ca_cert.as_deref(),
        Duration::from_secs(90),
    )?;
    let mut failures = 0u32;
    let mut shown_code = String::new();
    while !stop.load(Ordering::Relaxed) {
        let wait = match step(config, &client, &mut shown_code) {
            Ok(next) => {
                failures = 0;
                next
            }
            Err(e) => {
                failures += 1;
                let wait = backoff(failures, config.poll_interval);
                tracing::warn!(error = %e, retry_in = ?wait, "server request failed");
                wait
            }
        };
        sleep(wait, stop);
    }
    Ok(())
}

/// One round: register if needed, else check in. Returns how long to wait before the next.
fn step(
    config: &Config,
    client: &Client,
    shown_code: &mut String,
) -> Result<Duration, ClientError> {
    let req = RegisterRequest {
        public_key: client.identity().public().to_openssh(),
        hostname_hint: hostname(config),
        facts: facts(),
    };
    // Registering is idempotent: an approved key simply learns its name. It keeps one code
    // path for "not yet approved" and "was removed, must enroll again".
    let host = match client.post::<_, RegisterResponse>(paths::REGISTER, &req)? {
        RegisterResponse::Pending { code, expires_at } => {
            if *shown_code != code {
                tracing::info!(code = %code, expires_at, "waiting for approval: on an admin machine run `yeet approve NAME {code}`");
                println!("verification code: {code}");
                *shown_code = code;
            }
            return Ok(config.poll_interval);
        }
        RegisterResponse::Approved { host } => host,
    };
    if !shown_code.is_empty() {
        tracing::info!(host = %host, "approved");
        shown_code.clear();
    }
    checkin(client, &host)
}

fn checkin(client: &Client, host: &str) -> Result<Duration, ClientError> {
    let req = CheckinRequest {
        current_system: system_link("/run/current-system"),
        booted_system: system_link("/run/booted-system"),
        state: Default::default(),
        facts: facts(),
        wait_secs: 0,
    };
    match client.post::<_, CheckinResponse>(paths::CHECKIN, &req) {
        Ok(resp) => {
            if let Action::Switch {
                store_path,
                release_id,
            } = &resp.action
            {
                tracing::info!(host, %store_path, release_id, "desired system differs from the current one");
            }
            Ok(Duration::from_secs(resp.next_checkin_secs.max(1)))
        }
        // Removed by an admin: go back to registering (the next round shows a new code).
        Err(e) if e.api_code() == Some("unknown_key") => {
            tracing::warn!(
                host,
                "this host was removed from the fleet; registering again"
            );
            Ok(Duration::ZERO)
        }
        Err(e) => Err(e),
    }
}
