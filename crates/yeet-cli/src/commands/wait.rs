//! `yeet wait RELEASE` and `yeet publish --wait`: follow a release's hosts until each has
//! landed or failed, so that CI can gate on a deployment. The fleet is watched with the
//! server's long-poll (`GET /v1/hosts?wait=`), never a sleep loop; the exit code says how it
//! ended (see `EXIT_FAILED`, `EXIT_TIMED_OUT`).

use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use yeet_client::Client;
use yeet_proto::ErrorCode;
use yeet_proto::api::{ActivationResult, HostInfo, HostState, Limit, MAX_WATCH_SECS, Release};
use yeet_proto::rollout::{Rollout, RolloutHostState, RolloutState};
use yeet_proto::text::{parse_duration, show_duration};

use super::{Connection, Json};
use crate::output;

/// Exit code when at least one host failed, rolled back, refused the system, or will not
/// run it (superseded, detached, removed).
pub const EXIT_FAILED: i32 = 3;
/// Exit code when no host failed but some had not finished when the timeout ran out.
pub const EXIT_TIMED_OUT: i32 = 4;
/// How often a followed rollout is read while it runs.
const ROLLOUT_LOOK_SECS: u64 = 3;

#[derive(clap::Args)]
pub struct WaitArgs {
    /// The release to follow (the number `yeet publish` printed).
    pub release: i64,
    #[command(flatten)]
    pub timeout: Timeout,
    #[command(flatten)]
    pub json: Json,
}

#[derive(clap::Args)]
pub struct Timeout {
    /// Give up on hosts that have not finished after this long: 90s, 10m, 1h.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// A release that did not land everywhere: how it ended, for the process's exit code.
#[derive(Debug)]
pub struct NotLanded {
    pub exit_code: i32,
    summary: String,
}

impl std::fmt::Display for NotLanded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.summary)
    }
}

impl std::error::Error for NotLanded {}

/// Where a host is with the release's system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Switched to it and confirmed.
    Confirmed,
    /// Runs it, without an activation of this release (it ran it already).
    Running,
    /// Installed it; a reboot finishes it (a new kernel, or a `boot`-mode switch).
    RebootRequired,
    RolledBack,
    Failed,
    /// Refused it: not signed by a key the host trusts.
    Untrusted,
    /// A newer release names the host.
    Superseded,
    /// Runs a locally chosen system; it takes releases again once attached.
    Detached,
    /// The host was removed from the fleet.
    Removed,
    /// The release's rollout stopped (halted, aborted) before its wave reached the host.
    NotReached,
    Offline,
    Updating,
    /// Online, and has not started on it yet.
    Waiting,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Confirmed => "confirmed",
            Outcome::Running => "running",
            Outcome::RebootRequired => "reboot-required",
            Outcome::RolledBack => "rolled-back",
            Outcome::Failed => "failed",
            Outcome::Untrusted => "untrusted",
            Outcome::Superseded => "superseded",
            Outcome::Detached => "detached",
            Outcome::Removed => "removed",
            Outcome::NotReached => "not-reached",
            Outcome::Offline => "offline",
            Outcome::Updating => "updating",
            Outcome::Waiting => "waiting",
        }
    }

    fn landed(self) -> bool {
        matches!(
            self,
            Outcome::Confirmed | Outcome::Running | Outcome::RebootRequired
        )
    }

    fn finished(self) -> bool {
        !matches!(
            self,
            Outcome::Offline | Outcome::Updating | Outcome::Waiting
        )
    }
}

/// Where `host` is with `system`, the release's system for it, by what the server shows.
pub fn outcome(release: i64, system: &str, host: Option<&HostInfo>) -> Outcome {
    let Some(h) = host else {
        return Outcome::Removed;
    };
    if h.desired_release.is_some_and(|newest| newest > release) {
        return Outcome::Superseded;
    }
    let attempted_this = h.last_result_system.as_deref() == Some(system);
    let result = h.last_result.filter(|_| attempted_this);
    match h.state {
        HostState::Detached => return Outcome::Detached,
        HostState::Offline => return Outcome::Offline,
        HostState::Updating => return Outcome::Updating,
        HostState::New => return Outcome::Waiting,
        _ => {}
    }
    // A failure counts only when it was this system's: a host's state can still show its
    // previous attempt until it reports on this one.
    match result {
        Some(ActivationResult::RolledBack) => return Outcome::RolledBack,
        Some(ActivationResult::Failed) => return Outcome::Failed,
        Some(ActivationResult::Untrusted) => return Outcome::Untrusted,
        _ => {}
    }
    let runs_it = h.current_system.as_deref() == Some(system);
    let confirmed = result == Some(ActivationResult::Confirmed);
    match h.state {
        HostState::RebootRequired if runs_it || confirmed => Outcome::RebootRequired,
        HostState::Standby if runs_it && confirmed => Outcome::Confirmed,
        HostState::Standby if runs_it => Outcome::Running,
        _ => Outcome::Waiting,
    }
}

/// One host's line of the result.
#[derive(Debug, Serialize)]
struct HostOutcome {
    host: String,
    system: String,
    outcome: Outcome,
    /// Why it failed, from its newest activation, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
pub struct WaitReport {
    release: i64,
    /// `landed`, `failed` or `timed-out`.
    result: &'static str,
    hosts: Vec<HostOutcome>,
    timeout_secs: u64,
}

pub fn run(args: &WaitArgs, connection: &Connection) -> Result<()> {
    let client = connection.connect()?;
    let release = client.release(args.release)?;
    let report = follow(&client, &release, args.timeout.timeout, args.json.json)?;
    if args.json.json {
        output::json(&report)?;
    } else {
        report.print();
    }
    report.verdict()
}

/// Follows `release`'s hosts until each has finished or `timeout` passed, showing progress
/// on stderr (none with `json`).
pub fn follow(
    client: &Client,
    release: &Release,
    timeout: Duration,
    json: bool,
) -> Result<WaitReport> {
    let deadline = Instant::now() + timeout;
    let progress = Progress::new(release.hosts.len(), json);
    let mut seen_tag: Option<String> = None;
    let mut outcomes: BTreeMap<String, Outcome> = BTreeMap::new();
    // A release applied in waves: followed wave by wave, and over once its rollout stops.
    let mut rollout = match client.rollout(release.id) {
        Ok(r) => Some(r),
        Err(e) if e.api_code() == Some(ErrorCode::UnknownRollout) => None,
        Err(e) => return Err(e.into()),
    };
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Whole seconds, at least one: the last wait may end up to a second after the
        // deadline, rather than ask again and again in its final second.
        let mut wait = left.as_secs().clamp(1, MAX_WATCH_SECS);
        if rollout.as_ref().is_some_and(|r| r.state.is_active()) {
            // A rollout may halt without any host changing: look at it every few seconds.
            wait = wait.min(ROLLOUT_LOOK_SECS);
        }
        if let Some((hosts, tag)) = client.watch_hosts(seen_tag.as_deref(), wait)? {
            seen_tag = Some(tag);
            if rollout.as_ref().is_some_and(|r| r.state.is_active()) {
                rollout = Some(client.rollout(release.id)?);
            }
            for (name, system) in &release.hosts {
                let mut now = outcome(release.id, system, hosts.iter().find(|h| &h.name == name));
                if now == Outcome::Waiting && rollout.as_ref().is_some_and(|r| not_reached(r, name))
                {
                    now = Outcome::NotReached;
                }
                if outcomes.insert(name.clone(), now) != Some(now) && now.finished() {
                    progress.finished(name, now);
                }
            }
            progress.update(&outcomes);
        }
        if outcomes.values().all(|o| o.finished()) || Instant::now() >= deadline {
            break;
        }
    }
    progress.done();
    let mut hosts = Vec::new();
    for (name, system) in &release.hosts {
        let outcome = outcomes.get(name).copied().unwrap_or(Outcome::Waiting);
        let reason = match (outcome, &rollout) {
            (Outcome::NotReached, Some(r)) => Some(format!("rollout {}", r.reason)),
            _ => (outcome.finished() && !outcome.landed())
                .then(|| failure_reason(client, name, system))
                .flatten(),
        };
        hosts.push(HostOutcome {
            host: name.clone(),
            system: system.clone(),
            outcome,
            reason,
        });
    }
    let failed = hosts
        .iter()
        .any(|l| l.outcome.finished() && !l.outcome.landed());
    let unfinished = hosts.iter().any(|l| !l.outcome.finished());
    Ok(WaitReport {
        release: release.id,
        result: match (failed, unfinished) {
            (false, false) => "landed",
            (true, _) => "failed",
            (false, true) => "timed-out",
        },
        hosts,
        timeout_secs: timeout.as_secs(),
    })
}

impl WaitReport {
    /// The hosts' outcomes as a table, and a line when the release landed.
    pub fn print(&self) {
        let mut table = output::table(["HOST", "OUTCOME", "SYSTEM", "REASON"]);
        for l in &self.hosts {
            table.add_row([
                l.host.as_str(),
                l.outcome.as_str(),
                &output::short_path(Some(&l.system)),
                l.reason.as_deref().unwrap_or(""),
            ]);
        }
        output::print_clean(format_args!("{table}"));
        if self.result == "landed" {
            output::print_clean(format_args!(
                "release {} landed on all {} host(s)",
                self.release,
                self.hosts.len()
            ));
        }
    }

    /// `Ok` when the release landed everywhere; otherwise the error naming each host that
    /// failed or did not finish, with the exit code that tells which.
    pub fn verdict(&self) -> Result<()> {
        let exit_code = match self.result {
            "landed" => return Ok(()),
            "failed" => EXIT_FAILED,
            _ => EXIT_TIMED_OUT,
        };
        let failed: Vec<&HostOutcome> = self
            .hosts
            .iter()
            .filter(|l| l.outcome.finished() && !l.outcome.landed())
            .collect();
        let unfinished: Vec<&HostOutcome> = self
            .hosts
            .iter()
            .filter(|l| !l.outcome.finished())
            .collect();
        let summary = summary(
            self.release,
            &failed,
            &unfinished,
            Duration::from_secs(self.timeout_secs),
        );
        Err(NotLanded { exit_code, summary }.into())
    }
}

/// The error line of a release that did not land: each host that failed or did not finish.
fn summary(
    release: i64,
    failed: &[&HostOutcome],
    unfinished: &[&HostOutcome],
    timeout: Duration,
) -> String {
    let names = |hosts: &[&HostOutcome]| {
        hosts
            .iter()
            .map(|h| format!("{} ({})", h.host, h.outcome.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut parts = Vec::new();
    if !failed.is_empty() {
        parts.push(format!("did not land on {}", names(failed)));
    }
    if !unfinished.is_empty() {
        parts.push(format!(
            "{} had not finished after {}",
            names(unfinished),
            show_duration(timeout)
        ));
    }
    let hint = if failed.iter().any(|h| {
        matches!(
            h.outcome,
            Outcome::RolledBack | Outcome::Failed | Outcome::Untrusted
        )
    }) {
        "; `yeet log HOST` shows why, `yeet retry HOST` offers the system again after a fix"
    } else {
        ""
    };
    format!("release {release} {}{hint}", parts.join("; "))
}

/// True when `host` will not get the release from its stopped rollout: its wave never
/// opened for it (not reached, or deferred) and the rollout halted or was aborted.
fn not_reached(rollout: &Rollout, host: &str) -> bool {
    matches!(rollout.state, RolloutState::Halted | RolloutState::Aborted)
        && rollout.waves.iter().flat_map(|w| &w.hosts).any(|h| {
            h.name == host
                && matches!(
                    h.state,
                    RolloutHostState::Waiting | RolloutHostState::Deferred
                )
        })
}

/// Why the host's newest attempt at `system` failed, from its activation history.
fn failure_reason(client: &Client, host: &str, system: &str) -> Option<String> {
    let newest = client
        .activations(host, Limit { limit: Some(1) })
        .ok()?
        .into_iter()
        .next()?;
    (newest.store_path == system).then_some(newest.reason)
}

/// Progress while waiting: a bar on a terminal; otherwise a line per host as it finishes.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// `--json`: nothing but the JSON on stdout, no lines on stderr either.
    quiet: bool,
}

impl Progress {
    fn new(hosts: usize, json: bool) -> Progress {
        let bar = (!json && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::new(hosts as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {pos}/{len} hosts finished [{elapsed}] {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress { bar, quiet: json }
    }

    fn finished(&self, host: &str, outcome: Outcome) {
        let line = format!(
            "{}: {}",
            yeet_proto::text::clean_line(host, 64),
            outcome.as_str()
        );
        match &self.bar {
            Some(bar) => bar.println(line),
            None if !self.quiet => eprintln!("{line}"),
            None => {}
        }
    }

    fn update(&self, outcomes: &BTreeMap<String, Outcome>) {
        let Some(bar) = &self.bar else {
            return;
        };
        bar.set_position(outcomes.values().filter(|o| o.finished()).count() as u64);
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for o in outcomes.values().filter(|o| !o.finished()) {
            *counts.entry(o.as_str()).or_default() += 1;
        }
        let waiting: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
        bar.set_message(waiting.join(", "));
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(state: HostState, current: &str, result: Option<(ActivationResult, &str)>) -> HostInfo {
        serde_json::from_value(serde_json::json!({
            "name": "web-1", "key_id": "k", "state": state, "current_system": current,
            "desired_system": "/nix/store/new", "desired_release": 7, "last_seen": 1,
            "approved_at": 0, "facts": {"os": "", "arch": "", "agent_version": ""},
            "last_result": result.map(|r| r.0),
            "last_result_system": result.map(|r| r.1),
        }))
        .unwrap()
    }

    /// A state left from the host's previous attempt is not this release's failure, and a
    /// host that runs the system without a confirmed activation of it still landed.
    #[test]
    fn outcomes_count_only_this_systems_attempts() {
        use ActivationResult as R;
        use HostState as S;
        let new = "/nix/store/new";
        let cases = [
            (
                host(
                    S::RolledBack,
                    "/nix/store/old",
                    Some((R::RolledBack, "/nix/store/older")),
                ),
                Outcome::Waiting,
            ),
            (
                host(S::RolledBack, "/nix/store/old", Some((R::RolledBack, new))),
                Outcome::RolledBack,
            ),
            (
                host(S::Failed, "/nix/store/old", Some((R::Failed, new))),
                Outcome::Failed,
            ),
            (
                host(S::Untrusted, "/nix/store/old", Some((R::Untrusted, new))),
                Outcome::Untrusted,
            ),
            (host(S::Updating, new, None), Outcome::Updating),
            (
                host(S::Standby, new, Some((R::Confirmed, new))),
                Outcome::Confirmed,
            ),
            (
                host(S::Standby, new, Some((R::Confirmed, "/nix/store/old"))),
                Outcome::Running,
            ),
            (
                host(
                    S::RebootRequired,
                    "/nix/store/old",
                    Some((R::Confirmed, new)),
                ),
                Outcome::RebootRequired,
            ),
            (
                host(
                    S::RebootRequired,
                    "/nix/store/old",
                    Some((R::Confirmed, "/nix/store/old")),
                ),
                Outcome::Waiting,
            ),
            (host(S::Offline, "/nix/store/old", None), Outcome::Offline),
            (host(S::Detached, "/nix/store/old", None), Outcome::Detached),
        ];
        for (info, expected) in cases {
            assert_eq!(outcome(7, new, Some(&info)), expected, "{info:?}");
        }
        let mut newer = host(
            HostState::Standby,
            new,
            Some((ActivationResult::Confirmed, new)),
        );
        newer.desired_release = Some(8);
        assert_eq!(outcome(7, new, Some(&newer)), Outcome::Superseded);
        assert_eq!(outcome(7, new, None), Outcome::Removed);
    }
}
