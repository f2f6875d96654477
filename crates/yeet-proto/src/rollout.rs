//! Staged rollouts on the wire: named policies (waves, bake, failure threshold, action on
//! failure, health requirements), how a release's hosts are split into waves, and the
//! status a rollout shows. Pure, so that the server assigns waves and the CLI explains a
//! policy with one definition.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::names::{validate_host_name, validate_tag};

/// Most waves in one policy: a rollout is a few stages, not a schedule per host.
pub const MAX_WAVES: usize = 16;
/// Longest bake: a week. Longer is a release left half-deployed, not a bake.
pub const MAX_BAKE_SECS: u64 = 7 * 24 * 3600;
/// Longest policy name, in the characters of a host name.
pub const MAX_POLICY_NAME: usize = 63;

/// Which hosts a wave takes, from the release's hosts that no earlier wave took.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum WaveSelector {
    /// `tag:T`: the remaining hosts carrying tag T.
    Tag(String),
    /// `host:NAME`: that host, if the release names it and no earlier wave took it.
    Host(String),
    /// `P%`: P percent of the remaining hosts (rounded up), picked by a stable hash of host
    /// and rollout, so that a wave is spread over the fleet and the same on every replica.
    Percent(u8),
}

impl fmt::Display for WaveSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WaveSelector::Tag(t) => write!(f, "tag:{t}"),
            WaveSelector::Host(h) => write!(f, "host:{h}"),
            WaveSelector::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for WaveSelector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(tag) = s.strip_prefix("tag:") {
            validate_tag(tag).map_err(|e| e.to_string())?;
            return Ok(WaveSelector::Tag(tag.to_owned()));
        }
        if let Some(host) = s.strip_prefix("host:") {
            validate_host_name(host).map_err(|e| e.to_string())?;
            return Ok(WaveSelector::Host(host.to_owned()));
        }
        if let Some(p) = s.strip_suffix('%') {
            return match p.parse::<u8>() {
                Ok(p) if (1..=100).contains(&p) => Ok(WaveSelector::Percent(p)),
                _ => Err(format!("wave {s:?}: a percentage is 1% to 100%")),
            };
        }
        Err(format!(
            "wave {s:?}: write tag:TAG, host:NAME or a percentage such as 10%"
        ))
    }
}

/// How many failures a wave (and the whole rollout) tolerates before it halts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Threshold {
    /// At most N hosts.
    Count(u32),
    /// At most P percent of the hosts counted (rounded down).
    Percent(u8),
}

impl Threshold {
    /// The most failures allowed among `hosts` hosts.
    pub fn allowed(self, hosts: usize) -> usize {
        match self {
            Threshold::Count(n) => n as usize,
            Threshold::Percent(p) => hosts * usize::from(p) / 100,
        }
    }
}

impl Default for Threshold {
    fn default() -> Self {
        Threshold::Count(0)
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Threshold::Count(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Threshold {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let invalid = || format!("{s:?}: write a number of hosts (1) or a percentage (10%)");
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= 100 => Ok(Threshold::Percent(p)),
                _ => Err(invalid()),
            },
            None => s.parse().map(Threshold::Count).map_err(|_| invalid()),
        }
    }
}

/// Serde reads and writes these types as their strings (`tag:canary`, `10%`), through
/// `FromStr` and `Display`, so that the JSON holds what operators type.
macro_rules! as_string {
    ($($ty:ty),+) => {$(
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }

        impl From<$ty> for String {
            fn from(v: $ty) -> String {
                v.to_string()
            }
        }
    )+};
}

as_string!(WaveSelector, Threshold);

/// What a rollout does when a wave has more failures than allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFailure {
    /// Open no further wave; hosts keep what they run.
    #[default]
    Halt,
    /// Halt, and point the failed wave's hosts back at their previous systems (a rollback
    /// release, as `yeet rollback` makes).
    Rollback,
}

/// What a wave's hosts must show during the bake besides having confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthCheck {
    /// The host's check-ins report no failed systemd units (`systemctl --failed`).
    #[serde(rename = "failed-units=0")]
    NoFailedUnits,
}

impl FromStr for HealthCheck {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "failed-units=0" => Ok(HealthCheck::NoFailedUnits),
            _ => Err(format!(
                "health check {s:?}: the one known is failed-units=0"
            )),
        }
    }
}

impl fmt::Display for HealthCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HealthCheck::NoFailedUnits => f.write_str("failed-units=0"),
        }
    }
}

/// A named rollout policy: `yeet rollout policy set NAME ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    pub waves: Vec<WaveSelector>,
    /// After every online host of a wave confirmed, how long it must stay healthy before
    /// the next wave opens.
    #[serde(default)]
    pub bake_secs: u64,
    /// Failures a wave tolerates; the whole rollout tolerates the same share of its hosts.
    #[serde(default)]
    pub max_failures: Threshold,
    #[serde(default)]
    pub on_failure: OnFailure,
    #[serde(default)]
    pub health: Vec<HealthCheck>,
    /// The share of a wave's hosts (percent) that must be online and confirmed before the
    /// wave can pass; the others are deferred. `None`: any share, even none.
    #[serde(default)]
    pub min_online: Option<u8>,
}

impl RolloutPolicy {
    /// Why this policy cannot be stored, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.waves.is_empty() {
            return Err("a policy needs at least one wave (--wave)".into());
        }
        if self.waves.len() > MAX_WAVES {
            return Err(format!("at most {MAX_WAVES} waves"));
        }
        if self.health.len() > 4 {
            return Err("name each health check once".into());
        }
        if self.bake_secs > MAX_BAKE_SECS {
            return Err("a bake is at most a week (168h)".into());
        }
        if let Some(p) = self.min_online
            && p > 100
        {
            return Err("--min-online is a percentage, 0% to 100%".into());
        }
        Ok(())
    }
}

/// A policy as stored, with who last set it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedPolicy {
    pub name: String,
    pub policy: RolloutPolicy,
    pub updated_at: i64,
    pub updated_by: String,
}

/// Checks a policy name: the characters of a host name.
pub fn validate_policy_name(name: &str) -> Result<(), String> {
    validate_host_name(name).map_err(|_| {
        format!(
            "invalid policy name {name:?}: use 1-{MAX_POLICY_NAME} characters of a-z, 0-9, '-', '_' or '.', starting with a letter or digit"
        )
    })
}

/// One host a rollout splits: its id (stable across renames), name and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WaveCandidate {
    pub id: i64,
    pub name: String,
    pub tags: Vec<String>,
}

/// The order in which percentage waves pick hosts: a hash of rollout and host, so that
/// picks are spread over the fleet, differ between rollouts, and are the same wherever
/// they are computed.
fn pick_order(rollout: i64, host: i64) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"yeet-wave\0");
    h.update(rollout.to_be_bytes());
    h.update(host.to_be_bytes());
    h.finalize().into()
}

/// Splits `hosts` into the policy's waves for rollout `rollout`: the wave index of every
/// host, in the order given. Each wave takes from the hosts no earlier wave took, so no
/// host is in two waves; hosts that no wave selects join the last wave, so that a rollout
/// reaches every host its release names.
pub fn assign_waves(policy: &RolloutPolicy, rollout: i64, hosts: &[WaveCandidate]) -> Vec<usize> {
    let last = policy.waves.len().saturating_sub(1);
    let mut wave_of: Vec<Option<usize>> = vec![None; hosts.len()];
    for (w, selector) in policy.waves.iter().enumerate() {
        let remaining: Vec<usize> = (0..hosts.len()).filter(|&i| wave_of[i].is_none()).collect();
        let taken: Vec<usize> = match selector {
            WaveSelector::Tag(t) => remaining
                .into_iter()
                .filter(|&i| hosts[i].tags.iter().any(|x| x == t))
                .collect(),
            WaveSelector::Host(n) => remaining
                .into_iter()
                .filter(|&i| hosts[i].name == *n)
                .collect(),
            WaveSelector::Percent(p) => {
                let count = (remaining.len() * usize::from(*p)).div_ceil(100);
                let mut ordered = remaining;
                ordered.sort_by_key(|&i| pick_order(rollout, hosts[i].id));
                ordered.truncate(count);
                ordered
            }
        };
        for i in taken {
            wave_of[i] = Some(w);
        }
    }
    wave_of.into_iter().map(|w| w.unwrap_or(last)).collect()
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Opening waves as their gates pass.
    Running,
    /// Stopped by an operator; `resume` goes on where it was.
    Paused,
    /// Stopped by failures; opens nothing more.
    Halted,
    /// Stopped by an operator for good.
    Aborted,
    /// Newer releases name all its hosts: it decides nothing any more.
    Superseded,
    /// Every wave passed.
    Completed,
}

wire_names!(RolloutState, "rollout state" {
    Running => "running", Paused => "paused", Halted => "halted", Aborted => "aborted", Superseded => "superseded", Completed => "completed",
});

impl RolloutState {
    /// Running or paused: the rollout may still open waves.
    pub fn is_active(self) -> bool {
        matches!(self, RolloutState::Running | RolloutState::Paused)
    }
}

/// Where one host of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutHostState {
    /// Its wave has not opened.
    Waiting,
    /// Its wave opened, but it was offline (or outside its window): it gets the release
    /// when it returns, unless the rollout stopped by then.
    Deferred,
    /// Given the release; no result yet.
    Updating,
    Confirmed,
    /// Failed, rolled back, refused the closure, or turned unhealthy during the bake.
    Failed,
    /// A newer release names it: this rollout no longer decides what it runs.
    Superseded,
}

wire_names!(RolloutHostState, "rollout host state" {
    Waiting => "waiting", Deferred => "deferred", Updating => "updating", Confirmed => "confirmed", Failed => "failed", Superseded => "superseded",
});

/// One host in a rollout's status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutHost {
    pub name: String,
    pub state: RolloutHostState,
    /// Why it is where it is, for people ("wave 3 opens after the bake of wave 2 (4m left)").
    pub reason: String,
}

/// Where one wave stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WaveState {
    Waiting,
    /// Open: its hosts are updating.
    Open,
    /// Every online host confirmed; the bake is running.
    Baking,
    Passed,
    /// Had more failures than allowed.
    Failed,
}

wire_names!(WaveState, "wave state" {
    Waiting => "waiting", Open => "open", Baking => "baking", Passed => "passed", Failed => "failed",
});

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaveStatus {
    /// The selector as the policy wrote it.
    pub selector: String,
    pub state: WaveState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<i64>,
    /// When the bake ends (server clock), while baking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bake_ends_at: Option<i64>,
    pub failures: usize,
    pub max_failures: usize,
    pub hosts: Vec<RolloutHost>,
}

/// A rollout: a release applied in waves. Its id is its release's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub release: i64,
    pub policy_name: String,
    pub policy: RolloutPolicy,
    pub state: RolloutState,
    /// Why it stopped (halted, aborted, superseded), or what it waits for.
    pub reason: String,
    pub author: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// The index of the newest open wave; `None` before the first opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<usize>,
    pub waves: Vec<WaveStatus>,
}

/// `PUT /v1/rollout-policies/{name}`.
pub type SetPolicyRequest = RolloutPolicy;

/// `POST /v1/rollouts`: roll an existing release out again, in waves (a new release with
/// the same systems whose hosts wait for their waves).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartRolloutRequest {
    pub release: i64,
    pub policy: String,
}

/// `POST /v1/rollouts/{id}/{pause,resume,abort,promote}` answers the rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutControl {
    Pause,
    Resume,
    Abort,
    /// Open the next wave now, skipping what is left of the current one's bake.
    Promote,
}

impl RolloutControl {
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutControl::Pause => "pause",
            RolloutControl::Resume => "resume",
            RolloutControl::Abort => "abort",
            RolloutControl::Promote => "promote",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Wave index → number of hosts in it.
    fn wave_sizes(waves: &[usize], count: usize) -> BTreeMap<usize, usize> {
        let mut sizes: BTreeMap<usize, usize> = (0..count).map(|w| (w, 0)).collect();
        for w in waves {
            *sizes.entry(*w).or_default() += 1;
        }
        sizes
    }

    fn hosts(n: i64) -> Vec<WaveCandidate> {
        (1..=n)
            .map(|id| WaveCandidate {
                id,
                name: format!("h{id}"),
                tags: if id <= 2 {
                    vec!["canary".into()]
                } else {
                    vec![]
                },
            })
            .collect()
    }

    fn policy(waves: &[&str]) -> RolloutPolicy {
        RolloutPolicy {
            waves: waves.iter().map(|w| w.parse().unwrap()).collect(),
            bake_secs: 0,
            max_failures: Threshold::Count(0),
            on_failure: OnFailure::Halt,
            health: vec![],
            min_online: None,
        }
    }

    #[test]
    fn selectors_and_thresholds_read_as_written_and_bad_ones_say_why() {
        for s in ["tag:canary", "host:web-1", "10%", "100%"] {
            assert_eq!(s.parse::<WaveSelector>().unwrap().to_string(), s);
        }
        for bad in [
            "0%",
            "101%",
            "canary",
            "tag:",
            "tag:Bad Tag",
            "host:-x",
            "%",
        ] {
            assert!(bad.parse::<WaveSelector>().is_err(), "{bad}");
        }
        assert_eq!(Threshold::Percent(10).allowed(25), 2);
        assert_eq!(Threshold::Count(1).allowed(25), 1);
        assert!("x".parse::<Threshold>().is_err());
        assert!("101%".parse::<Threshold>().is_err());
        let p = policy(&["tag:canary", "10%"]);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["waves"][0], "tag:canary");
        assert_eq!(serde_json::from_value::<RolloutPolicy>(json).unwrap(), p);
        let bad: Result<RolloutPolicy, _> =
            serde_json::from_value(serde_json::json!({"waves": ["nope"]}));
        assert!(bad.is_err());
    }

    #[test]
    fn every_host_is_in_exactly_one_wave_and_percentages_are_stable() {
        let fleet = hosts(20);
        let p = policy(&["tag:canary", "10%", "50%", "100%"]);
        let waves = assign_waves(&p, 7, &fleet);
        assert_eq!(waves.len(), 20);
        // The canaries first; 10% of the 18 left (2), 50% of 16 (8), the rest (8).
        assert_eq!(&waves[..2], &[0, 0]);
        let sizes = wave_sizes(&waves, 4);
        assert_eq!(sizes.values().copied().collect::<Vec<_>>(), [2, 2, 8, 8]);
        assert_eq!(assign_waves(&p, 7, &fleet), waves, "not reproducible");
        assert_ne!(
            assign_waves(&p, 8, &fleet),
            waves,
            "another rollout picks alike"
        );
        // The order of the input does not change a host's wave.
        let mut reversed = fleet.clone();
        reversed.reverse();
        let back = assign_waves(&p, 7, &reversed);
        for (i, h) in reversed.iter().enumerate() {
            assert_eq!(back[i], waves[(h.id - 1) as usize]);
        }
        // Hosts no wave selects join the last.
        let partial = assign_waves(&policy(&["tag:canary", "host:h5"]), 7, &fleet);
        assert_eq!(
            wave_sizes(&partial, 2)
                .values()
                .copied()
                .collect::<Vec<_>>(),
            [2, 18]
        );
    }

    #[test]
    fn policies_are_checked() {
        assert!(policy(&[]).check().is_err());
        assert!(policy(&["10%"; 17]).check().is_err());
        let mut p = policy(&["10%"]);
        p.bake_secs = MAX_BAKE_SECS + 1;
        assert!(p.check().is_err());
        p.bake_secs = 60;
        assert!(p.check().is_ok());
    }
}
