//! Staged rollouts: named policies, the rollouts that apply releases wave by wave, and the
//! driver that moves them. The driver holds no state of its own: every tick it reads each
//! active rollout from the database, judges its open wave's gate, and makes at most one
//! step by a conditional update (`Store::advance_rollout`). So any replica may drive, a
//! step is made once however many see its gate pass, and a restarted server goes on
//! where the database says, with the bake's remaining time.

use std::collections::HashMap;
use std::time::Duration;

use yeet_proto::ErrorCode;
use yeet_proto::api::{ActivationResult, Role};
use yeet_proto::audit::{
    ROLLOUT_BAKE_STARTED, ROLLOUT_COMPLETED, ROLLOUT_DEFERRED_OPENED, ROLLOUT_HALTED,
    ROLLOUT_SUPERSEDED, ROLLOUT_WAVE_OPENED, ROLLOUT_WAVE_PASSED, SERVER_ACTOR,
};
use yeet_proto::rollout::{
    HealthCheck, NamedPolicy, OnFailure, Rollout, RolloutControl, RolloutHost, RolloutHostState,
    RolloutPolicy, RolloutState, StartRolloutRequest, WaveCandidate, WaveState, WaveStatus,
    validate_policy_name,
};

use super::auth::{Scope, require_role, require_role_in_scope};
use super::{Principal, Result, Service, ServiceError, lock, now, now_ms};
use crate::store::{
    AuditEntry, NewRelease, NewRollout, RollbackRelease, RolloutHostRow, RolloutRow, Transition,
    split_tags,
};

/// Rollouts listed when the caller gives no limit.
const DEFAULT_ROLLOUT_LIMIT: i64 = 50;
/// The longest the driver sleeps: a gate that depends on a host's report or on a host
/// coming back online is judged at least this often.
pub const DRIVER_TICK: Duration = Duration::from_secs(1);
/// The shortest time between two runs of the driver. Reports wake it, and a host can send
/// a changed report (a failed-unit count going up and down) as often as it checks in: each
/// wake would judge every active rollout anew. 100 ms keeps gates reacting at once, to a
/// person, and bounds a flood of reports to ten runs a second.
pub const DRIVER_MIN_SPACING: Duration = Duration::from_millis(100);
/// Steps one rollout may make in one tick (open wave 0, its hosts confirm at once, ...):
/// bounded, so that a rollout cannot keep the driver from the others.
const STEPS_PER_TICK: usize = 8;

/// A host of a rollout as its gates see it.
struct Judged<'a> {
    row: &'a RolloutHostRow,
    state: RolloutHostState,
    reason: String,
    /// Online, and inside a maintenance window if one covers it: it may be given the
    /// release now.
    eligible: bool,
}

/// The rollout's state of one wave's hosts: failed, still updating, confirmed, and how
/// many count at all (not superseded).
#[derive(Default)]
struct Tally {
    hosts: usize,
    failed: usize,
    updating: usize,
    confirmed: usize,
}

fn tally<'a>(hosts: impl Iterator<Item = &'a Judged<'a>>) -> Tally {
    let mut t = Tally::default();
    for h in hosts {
        match h.state {
            RolloutHostState::Superseded => continue,
            RolloutHostState::Failed => t.failed += 1,
            RolloutHostState::Updating => t.updating += 1,
            RolloutHostState::Confirmed => t.confirmed += 1,
            RolloutHostState::Waiting | RolloutHostState::Deferred => {}
        }
        t.hosts += 1;
    }
    t
}

/// `secs` as people read a wait: `4m`, `1h30m`, `12s`.
fn show_secs(secs: i64) -> String {
    yeet_proto::text::show_duration(Duration::from_secs(secs.max(0) as u64))
}

impl Service {
    fn refuse_unknown_rollout(id: i64) -> ServiceError {
        ServiceError::refused(
            ErrorCode::UnknownRollout,
            format!("no rollout {id}; see `yeet rollouts`"),
        )
    }

    /// `yeet rollout policy set NAME ...` (admins): stores or replaces a policy. Running
    /// rollouts keep the policy they started with.
    pub async fn set_policy(
        &self,
        principal: &Principal,
        name: &str,
        policy: RolloutPolicy,
    ) -> Result<NamedPolicy> {
        let author = require_role(principal, Role::Admin)?;
        validate_policy_name(name)
            .and_then(|()| policy.check())
            .map_err(|e| ServiceError::refused(ErrorCode::InvalidPolicy, e))?;
        let audit = self.audit_entry(
            principal,
            "rollout.policy.set",
            vec![],
            serde_json::json!({ "policy": name, "spec": policy }),
        );
        let at = now();
        self.store
            .set_policy(name, &policy, at, author, &audit)
            .await?;
        Ok(NamedPolicy {
            name: name.to_owned(),
            policy,
            updated_at: at,
            updated_by: author.to_owned(),
        })
    }

    pub async fn list_policies(&self, principal: &Principal) -> Result<Vec<NamedPolicy>> {
        require_role_in_scope(principal, Role::Viewer)?;
        Ok(self.store.list_policies().await?)
    }

    pub async fn remove_policy(&self, principal: &Principal, name: &str) -> Result<()> {
        require_role(principal, Role::Admin)?;
        let audit = self.audit_entry(
            principal,
            "rollout.policy.remove",
            vec![],
            serde_json::json!({ "policy": name }),
        );
        if !self.store.remove_policy(name, &audit).await? {
            return Err(ServiceError::refused(
                ErrorCode::UnknownPolicy,
                format!("no rollout policy named {name:?}; `yeet rollout policy list` shows them"),
            ));
        }
        Ok(())
    }

    /// The rollout a new release starts: the policy it names, else the server's default,
    /// unless it asks for every host at once. `None`: an ordinary release.
    pub(super) async fn rollout_for(
        &self,
        named: Option<&str>,
        all_at_once: bool,
        entries: &[(i64, String, String)],
    ) -> Result<Option<NewRollout>> {
        if all_at_once {
            return Ok(None);
        }
        let Some(name) = named.or(self.config.default_rollout_policy.as_deref()) else {
            return Ok(None);
        };
        let policy = self.store.policy(name).await?.ok_or_else(|| {
            ServiceError::refused(
                ErrorCode::InvalidPolicy,
                format!("no rollout policy named {name:?}; `yeet rollout policy list` shows them, `yeet rollout policy set` adds one"),
            )
        })?;
        // One read of the fleet for every host's tags, not one per host.
        let tags: HashMap<i64, String> = self
            .store
            .list_hosts()
            .await?
            .into_iter()
            .map(|h| (h.id, h.tags))
            .collect();
        let hosts = entries
            .iter()
            .map(|(id, name, _)| WaveCandidate {
                id: *id,
                name: name.clone(),
                tags: tags.get(id).map(|t| split_tags(t)).unwrap_or_default(),
            })
            .collect();
        Ok(Some(NewRollout {
            policy_name: name.to_owned(),
            policy,
            hosts,
        }))
    }

    /// `yeet rollout start RELEASE --policy P`: the release's systems again, as a new
    /// release applied in waves (the hosts the caller may see).
    pub async fn start_rollout(
        &self,
        principal: &Principal,
        req: StartRolloutRequest,
    ) -> Result<yeet_proto::api::Release> {
        let (author, scope) = require_role_in_scope(principal, Role::Publisher)?;
        let release = self.release_in_scope(scope, req.release).await?;
        // By host id (names change), the hosts that still exist and are in scope.
        let hosts: HashMap<i64, crate::store::HostRow> = self
            .store
            .list_hosts()
            .await?
            .into_iter()
            .filter(|h| scope.covers(&split_tags(&h.tags)))
            .map(|h| (h.id, h))
            .collect();
        let entries: Vec<(i64, String, String)> = release
            .host_ids
            .iter()
            .zip(&release.entries)
            .filter_map(|(id, (_, path))| {
                hosts.get(id).map(|h| (h.id, h.name.clone(), path.clone()))
            })
            .collect();
        if entries.is_empty() {
            return Err(ServiceError::refused(
                ErrorCode::EmptyRelease,
                format!("none of release {}'s hosts exist any more", req.release),
            ));
        }
        let rollout = self.rollout_for(Some(&req.policy), false, &entries).await?;
        self.commit_release(
            principal,
            NewRelease {
                author: author.to_owned(),
                message: format!("rollout of release {}", req.release),
                revision: release.revision,
                dirty: release.dirty,
                rollback: false,
                rollout,
            },
            entries,
        )
        .await
    }

    /// The rollout `id` if the caller may see it: a scoped user sees rollouts naming one
    /// of their hosts, and only those hosts in it.
    async fn rollout_in_scope(
        &self,
        scope: Scope<'_>,
        id: i64,
    ) -> Result<(RolloutRow, Vec<RolloutHostRow>, bool)> {
        let row = self
            .store
            .rollout(id)
            .await?
            .ok_or_else(|| Self::refuse_unknown_rollout(id))?;
        let mut hosts = self.store.rollout_hosts(id).await?;
        let visible = self.host_ids_in_scope(scope).await?;
        let all = hosts.len();
        if let Some(v) = &visible {
            hosts.retain(|h| v.contains(&h.host_id));
        }
        if hosts.is_empty() {
            return Err(Self::refuse_unknown_rollout(id));
        }
        let whole = hosts.len() == all;
        Ok((row, hosts, whole))
    }

    pub async fn show_rollout(&self, principal: &Principal, id: i64) -> Result<Rollout> {
        let (_, scope) = require_role_in_scope(principal, Role::Viewer)?;
        let (row, hosts, _) = self.rollout_in_scope(scope, id).await?;
        Ok(self.rollout_view(&row, &hosts, now_ms()))
    }

    pub async fn list_rollouts(
        &self,
        principal: &Principal,
        limit: Option<i64>,
    ) -> Result<Vec<Rollout>> {
        let (_, scope) = require_role_in_scope(principal, Role::Viewer)?;
        let visible = self.host_ids_in_scope(scope).await?;
        let limit = limit.unwrap_or(DEFAULT_ROLLOUT_LIMIT).clamp(1, 1000);
        let mut out = Vec::new();
        let at = now_ms();
        for row in self.store.list_rollouts(limit).await? {
            let mut hosts = self.store.rollout_hosts(row.release_id).await?;
            if let Some(v) = &visible {
                hosts.retain(|h| v.contains(&h.host_id));
            }
            if !hosts.is_empty() {
                out.push(self.rollout_view(&row, &hosts, at));
            }
        }
        Ok(out)
    }

    /// Pause, resume, abort or promote a rollout. A scoped publisher controls only
    /// rollouts whose hosts are all theirs.
    pub async fn control_rollout(
        &self,
        principal: &Principal,
        id: i64,
        control: RolloutControl,
    ) -> Result<Rollout> {
        let (_, scope) = require_role_in_scope(principal, Role::Publisher)?;
        // A conflict means another step was made meanwhile: judge again from what it left.
        for _ in 0..16 {
            let (row, hosts, whole) = self.rollout_in_scope(scope, id).await?;
            if !whole {
                return Err(ServiceError::refused(
                    ErrorCode::RolloutConflict,
                    format!("rollout {id} has hosts outside your scope; ask an unscoped publisher"),
                ));
            }
            let at = now_ms();
            let conflict = |why: &str| {
                ServiceError::refused(
                    ErrorCode::RolloutConflict,
                    format!("rollout {id} is {}: {why}", row.state.as_str()),
                )
            };
            let mut t = match (control, row.state) {
                (RolloutControl::Pause, RolloutState::Running) => Transition {
                    state: Some(RolloutState::Paused),
                    reason: Some(format!("paused by {}", principal.display_name())),
                    ..Default::default()
                },
                (RolloutControl::Resume, RolloutState::Paused) => Transition {
                    state: Some(RolloutState::Running),
                    reason: Some(String::new()),
                    ..Default::default()
                },
                (RolloutControl::Abort, s) if s.is_active() => Transition {
                    state: Some(RolloutState::Aborted),
                    reason: Some(format!("aborted by {}", principal.display_name())),
                    ..Default::default()
                },
                (RolloutControl::Promote, s) if s.is_active() => {
                    let waves = row.policy.waves.len() as i64;
                    if row.wave + 1 >= waves {
                        return Err(conflict("its last wave is open already"));
                    }
                    let judged = self.judge(&row, &hosts, at);
                    let cause = format!("promoted by {}", principal.display_name());
                    self.open_wave(&row, &judged, row.wave + 1, at, &cause)
                }
                (RolloutControl::Pause | RolloutControl::Resume, _)
                | (RolloutControl::Abort | RolloutControl::Promote, _) => {
                    return Err(conflict(match control {
                        RolloutControl::Pause => "only a running rollout pauses",
                        RolloutControl::Resume => "only a paused rollout resumes",
                        _ => "it has stopped for good",
                    }));
                }
            };
            // The event names the rollout, not its hosts: a promote's wave-opened event, in
            // the same transaction, names the hosts it moves and who promoted them (a
            // rollout of 20,000 hosts would otherwise link them all to every event).
            t.audit.push(self.audit_entry(
                principal,
                &format!("rollout.{}", control.as_str()),
                vec![],
                serde_json::json!({ "rollout": id, "wave": row.wave + 1 }),
            ));
            if self.store.advance_rollout(id, row.step, at, &t).await? {
                self.after_step(id, &t).await;
                let (row, hosts, _) = self.rollout_in_scope(scope, id).await?;
                return Ok(self.rollout_view(&row, &hosts, now_ms()));
            }
        }
        Err(ServiceError::refused(
            ErrorCode::Busy,
            "the rollout kept changing; retry in a moment",
        ))
    }

    /// True when the host counts as online now (seen within the offline threshold, by this
    /// replica or, through the database, by any).
    fn online(&self, h: &RolloutHostRow, at_secs: i64) -> bool {
        let pending = lock(&self.seen).get(&h.host_id).copied();
        self.offline_at(h.host_id, h.last_seen.max(pending))
            .is_some_and(|offline| at_secs < offline)
    }

    /// Each host's state in the rollout, and why.
    fn judge<'a>(
        &self,
        row: &RolloutRow,
        hosts: &'a [RolloutHostRow],
        at_ms: i64,
    ) -> Vec<Judged<'a>> {
        let at = at_ms / 1000;
        let health = row.policy.health.contains(&HealthCheck::NoFailedUnits);
        let bake_end = row
            .bake_started_at
            .map(|b| b + row.policy.bake_secs as i64 * 1000);
        hosts
            .iter()
            .map(|h| {
                let online = h.exists && self.online(h, at);
                let window = self.window_wait(&h.tags, at);
                let (state, reason) = if !h.exists {
                    (
                        RolloutHostState::Superseded,
                        "removed from the fleet".to_owned(),
                    )
                } else if let Some(newer) = h.newest_release.filter(|n| *n > row.release_id) {
                    (
                        RolloutHostState::Superseded,
                        format!("release {newer} names it since"),
                    )
                } else if h.wave > row.wave {
                    let reason = if !row.state.is_active() {
                        format!("not reached: the rollout is {}", row.state.as_str())
                    } else if h.wave == row.wave + 1 {
                        match bake_end {
                            Some(end) => format!(
                                "wave {} opens after the bake of wave {} ({} left)",
                                h.wave + 1,
                                row.wave + 1,
                                show_secs((end - at_ms + 999) / 1000)
                            ),
                            None if row.wave < 0 => "the first wave opens now".to_owned(),
                            None => format!(
                                "wave {} opens once wave {} has confirmed and baked",
                                h.wave + 1,
                                row.wave + 1
                            ),
                        }
                    } else {
                        format!("wave {} opens after wave {}", h.wave + 1, h.wave)
                    };
                    (RolloutHostState::Waiting, reason)
                } else if h.opened_at_ms.is_none() {
                    let reason = if !row.state.is_active() && row.state != RolloutState::Completed {
                        format!("not given: the rollout is {}", row.state.as_str())
                    } else if let Some(w) = window.as_ref().filter(|_| online) {
                        format!(
                            "deferred: outside maintenance window `{}` until {}",
                            w.window, w.opens
                        )
                    } else if online {
                        "deferred: given the release at the next tick".to_owned()
                    } else {
                        match h.last_seen {
                            Some(seen) => {
                                format!("deferred: offline, last seen {} ago", show_secs(at - seen))
                            }
                            None => "deferred: has never checked in".to_owned(),
                        }
                    };
                    (RolloutHostState::Deferred, reason)
                } else {
                    match h.result {
                        Some(ActivationResult::Confirmed)
                            if health && h.wave == row.wave && h.failed_units.unwrap_or(0) > 0 =>
                        {
                            (
                                RolloutHostState::Failed,
                                format!(
                                    "unhealthy: {} failed systemd unit(s)",
                                    h.failed_units.unwrap_or(0)
                                ),
                            )
                        }
                        Some(ActivationResult::Confirmed) => {
                            (RolloutHostState::Confirmed, "confirmed".to_owned())
                        }
                        Some(r) => (
                            RolloutHostState::Failed,
                            format!("{}: see `yeet log {}`", r.as_str(), h.name),
                        ),
                        None if online => (RolloutHostState::Updating, "updating".to_owned()),
                        None => (
                            RolloutHostState::Updating,
                            "updating, but offline now".to_owned(),
                        ),
                    }
                };
                Judged {
                    row: h,
                    state,
                    reason,
                    eligible: online && window.is_none(),
                }
            })
            .collect()
    }

    /// The step that opens wave `wave`: its hosts that are online now (and inside their
    /// maintenance windows, if any covers them) get the release; the others are deferred
    /// until they return or their window opens.
    fn open_wave(
        &self,
        row: &RolloutRow,
        judged: &[Judged<'_>],
        wave: i64,
        at_ms: i64,
        cause: &str,
    ) -> Transition {
        let (mut opened, mut deferred) = (Vec::new(), Vec::new());
        let mut open_ids = Vec::new();
        for j in judged.iter().filter(|j| j.row.wave == wave) {
            if j.state == RolloutHostState::Superseded {
                continue;
            }
            if j.eligible {
                opened.push(j.row.name.clone());
                open_ids.push(j.row.host_id);
            } else {
                deferred.push(j.row.name.clone());
            }
        }
        let mut audit = Vec::new();
        if row.wave >= 0 && row.wave < wave {
            audit.push(self.server_event(
                ROLLOUT_WAVE_PASSED,
                row,
                vec![],
                serde_json::json!({ "wave": row.wave + 1, "cause": cause }),
            ));
        }
        // The hosts opened are the event's hosts; the deferred ones (offline, outside a
        // window: usually few) are named in its details.
        audit.push(self.server_event(
            ROLLOUT_WAVE_OPENED,
            row,
            opened,
            serde_json::json!({ "wave": wave + 1, "deferred": deferred, "cause": cause }),
        ));
        Transition {
            wave: Some(wave),
            wave_opened_at: Some(Some(at_ms)),
            bake_started_at: Some(None),
            reason: Some(String::new()),
            open_hosts: open_ids,
            audit,
            ..Default::default()
        }
    }

    /// An event of a step the server made by itself.
    fn server_event(
        &self,
        action: &str,
        row: &RolloutRow,
        hosts: Vec<String>,
        mut details: serde_json::Value,
    ) -> AuditEntry {
        if let Some(d) = details.as_object_mut() {
            d.insert("rollout".into(), row.release_id.into());
        }
        AuditEntry {
            at_ms: now_ms(),
            actor: SERVER_ACTOR.to_owned(),
            key_id: String::new(),
            action: action.to_owned(),
            outcome: yeet_proto::audit::DONE.to_owned(),
            hosts,
            details,
            address: String::new(),
            nonce: String::new(),
        }
    }

    /// The next step of a running rollout, if its gates call for one.
    async fn next_step(
        &self,
        row: &RolloutRow,
        hosts: &[RolloutHostRow],
        at_ms: i64,
    ) -> Result<Option<Transition>> {
        let judged = self.judge(row, hosts, at_ms);
        // Newer releases name every host: this rollout decides nothing any more.
        if judged
            .iter()
            .all(|j| j.state == RolloutHostState::Superseded)
        {
            let by = hosts
                .iter()
                .filter_map(|h| h.newest_release)
                .filter(|n| *n > row.release_id)
                .max();
            return Ok(Some(Transition {
                state: Some(RolloutState::Superseded),
                reason: Some(match by {
                    Some(n) => {
                        format!(
                            "superseded: newer releases (the newest {n}) name all its hosts that remain"
                        )
                    }
                    None => "superseded: its hosts were removed".to_owned(),
                }),
                audit: vec![self.server_event(
                    ROLLOUT_SUPERSEDED,
                    row,
                    vec![],
                    serde_json::json!({ "by": by }),
                )],
                ..Default::default()
            }));
        }
        if row.state != RolloutState::Running {
            return Ok(None);
        }
        let waves = row.policy.waves.len() as i64;
        if row.wave < 0 {
            return Ok(Some(self.open_wave(
                row,
                &judged,
                0,
                at_ms,
                "rollout started",
            )));
        }
        // Deferred hosts of open or passed waves that came back (or whose window opened)
        // get the release.
        let back: Vec<&Judged<'_>> = judged
            .iter()
            .filter(|j| j.state == RolloutHostState::Deferred && j.eligible)
            .collect();
        if row.wave >= waves {
            if !back.is_empty() {
                return Ok(Some(self.open_deferred(row, &back)));
            }
            if judged.iter().all(|j| j.state != RolloutHostState::Deferred) {
                return Ok(Some(Transition {
                    state: Some(RolloutState::Completed),
                    reason: Some(String::new()),
                    audit: vec![self.server_event(
                        ROLLOUT_COMPLETED,
                        row,
                        vec![],
                        serde_json::json!({}),
                    )],
                    ..Default::default()
                }));
            }
            return Ok(None);
        }
        let wave = tally(judged.iter().filter(|j| j.row.wave == row.wave));
        let so_far = tally(judged.iter().filter(|j| j.row.wave <= row.wave));
        let allowed = row.policy.max_failures.allowed(wave.hosts);
        let allowed_overall = row.policy.max_failures.allowed(so_far.hosts);
        if wave.failed > allowed || so_far.failed > allowed_overall {
            return Ok(Some(
                self.halt(
                    row,
                    &judged,
                    (wave.failed, allowed),
                    (so_far.failed, allowed_overall),
                )
                .await?,
            ));
        }
        if !back.is_empty() {
            return Ok(Some(self.open_deferred(row, &back)));
        }
        match row.bake_started_at {
            None => {
                let enough_online = row.policy.min_online.is_none_or(|p| {
                    wave.confirmed * 100 >= usize::from(p) * wave.hosts && wave.hosts > 0 || p == 0
                });
                if wave.updating > 0 || !enough_online {
                    return Ok(None);
                }
                // Nothing to bake: no host, or none of them given the release.
                if row.policy.bake_secs == 0 || wave.confirmed == 0 && wave.failed == 0 {
                    return Ok(Some(self.pass_wave(row, &judged, at_ms)));
                }
                Ok(Some(Transition {
                    bake_started_at: Some(Some(at_ms)),
                    audit: vec![self.server_event(
                        ROLLOUT_BAKE_STARTED,
                        row,
                        vec![],
                        serde_json::json!({ "wave": row.wave + 1, "bake_secs": row.policy.bake_secs, "confirmed": wave.confirmed }),
                    )],
                    ..Default::default()
                }))
            }
            Some(started) if at_ms >= started + row.policy.bake_secs as i64 * 1000 => {
                Ok(Some(self.pass_wave(row, &judged, at_ms)))
            }
            Some(_) => Ok(None),
        }
    }

    /// The open wave passed: open the next, or note that every wave has.
    fn pass_wave(&self, row: &RolloutRow, judged: &[Judged<'_>], at_ms: i64) -> Transition {
        let waves = row.policy.waves.len() as i64;
        let cause = if row.policy.bake_secs == 0 {
            "confirmed"
        } else {
            "baked"
        };
        if row.wave + 1 < waves {
            return self.open_wave(row, judged, row.wave + 1, at_ms, cause);
        }
        Transition {
            wave: Some(waves),
            bake_started_at: Some(None),
            audit: vec![self.server_event(
                ROLLOUT_WAVE_PASSED,
                row,
                vec![],
                serde_json::json!({ "wave": row.wave + 1, "cause": cause }),
            )],
            ..Default::default()
        }
    }

    fn open_deferred(&self, row: &RolloutRow, back: &[&Judged<'_>]) -> Transition {
        let names: Vec<String> = back.iter().map(|j| j.row.name.clone()).collect();
        Transition {
            open_hosts: back.iter().map(|j| j.row.host_id).collect(),
            audit: vec![self.server_event(
                ROLLOUT_DEFERRED_OPENED,
                row,
                names,
                serde_json::json!({ "cause": "online again, and inside any window that covers it" }),
            )],
            ..Default::default()
        }
    }

    /// The step that halts a rollout whose failures passed its threshold, with a rollback
    /// release for the open wave's hosts when the policy says so.
    async fn halt(
        &self,
        row: &RolloutRow,
        judged: &[Judged<'_>],
        (failed, allowed): (usize, usize),
        (failed_overall, allowed_overall): (usize, usize),
    ) -> Result<Transition> {
        let failed_hosts: Vec<String> = judged
            .iter()
            .filter(|j| j.state == RolloutHostState::Failed)
            .map(|j| format!("{} ({})", j.row.name, j.reason))
            .collect();
        let reason = if failed > allowed {
            format!(
                "halted: {failed} failure(s) in wave {} (max {allowed})",
                row.wave + 1
            )
        } else {
            format!("halted: {failed_overall} failure(s) so far (max {allowed_overall})")
        };
        let mut rollback = None;
        let mut rolled_back = Vec::new();
        if row.policy.on_failure == OnFailure::Rollback {
            let mut entries = Vec::new();
            for j in judged.iter().filter(|j| {
                j.row.wave == row.wave
                    && j.row.opened_at_ms.is_some()
                    && j.state != RolloutHostState::Superseded
            }) {
                if let Some(path) = self
                    .store
                    .rollback_target(j.row.host_id, row.release_id)
                    .await?
                {
                    rolled_back.push(j.row.name.clone());
                    entries.push((j.row.host_id, j.row.name.clone(), path));
                }
            }
            if !entries.is_empty() {
                let event = self.server_event(
                    "release.rollback",
                    row,
                    rolled_back.clone(),
                    serde_json::json!({ "cause": reason }),
                );
                rollback = Some(RollbackRelease {
                    release: NewRelease {
                        author: SERVER_ACTOR.to_owned(),
                        message: format!(
                            "rollback of release {}: rollout {reason}",
                            row.release_id
                        ),
                        rollback: true,
                        ..Default::default()
                    },
                    entries,
                    audit: event,
                });
            }
        }
        Ok(Transition {
            state: Some(RolloutState::Halted),
            reason: Some(reason.clone()),
            rollback,
            audit: vec![self.server_event(
                ROLLOUT_HALTED,
                row,
                rolled_back.clone(),
                serde_json::json!({ "wave": row.wave + 1, "cause": reason, "failed": failed_hosts, "rolled_back": rolled_back }),
            )],
            ..Default::default()
        })
    }

    /// Makes every active rollout's due steps. Returns when the driver should look again
    /// at the latest (the nearest end of a bake), besides its tick.
    pub async fn drive_rollouts(&self) -> Result<Option<i64>> {
        self.rollout_drives
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut next_bake_end: Option<i64> = None;
        for mut row in self.store.active_rollouts().await? {
            for _ in 0..STEPS_PER_TICK {
                // A paused rollout is looked at only to see whether it was superseded.
                if !row.state.is_active() {
                    break;
                }
                let hosts = self.store.rollout_hosts(row.release_id).await?;
                let at = now_ms();
                let Some(t) = self.next_step(&row, &hosts, at).await? else {
                    if let Some(b) = row.bake_started_at {
                        let end = b + row.policy.bake_secs as i64 * 1000;
                        next_bake_end = Some(next_bake_end.map_or(end, |n| n.min(end)));
                    }
                    break;
                };
                let made = self
                    .store
                    .advance_rollout(row.release_id, row.step, at, &t)
                    .await?;
                if made {
                    tracing::info!(rollout = row.release_id, events = ?t.audit.iter().map(|a| a.action.as_str()).collect::<Vec<_>>(), "rollout step");
                    self.after_step(row.release_id, &t).await;
                }
                // Made here or by another replica: read what it left and judge again.
                match self.store.rollout(row.release_id).await? {
                    Some(fresh) => row = fresh,
                    None => break,
                }
            }
        }
        Ok(next_bake_end)
    }

    /// After a step: hosts whose entries opened (or were rolled back) learn of it here
    /// and on every replica; fleet watches see the change.
    async fn after_step(&self, release_id: i64, t: &Transition) {
        self.note_fleet_change();
        // Which releases' entries changed: the rollout's (opened ones), or, with a rollback,
        // a new release whose id the step does not know (everything is read again).
        let event = if t.rollback.is_some() {
            if let Err(e) = self.reload_desired().await {
                tracing::warn!(error = %e, "could not reload desired systems after a rollout step");
            }
            format!("{}rollback", super::EVENT_RELEASE)
        } else if !t.open_hosts.is_empty() {
            if let Err(e) = self.apply_opened_entries(release_id).await {
                tracing::warn!(error = %e, "could not load the entries a rollout step opened");
            }
            format!("{}{release_id}", super::EVENT_RELEASE)
        } else {
            return;
        };
        if let Err(e) = self.store.notify(&event).await {
            tracing::warn!(error = %e, "could not tell other replicas of a rollout step");
        }
    }

    /// Wakes this replica's driver now (a rollout started, a host reported).
    pub(crate) fn wake_rollouts(&self) {
        self.rollouts_changed.notify_one();
    }

    /// How many times the driver judged the active rollouts (for flood tests and metrics).
    pub fn rollout_drives(&self) -> u64 {
        self.rollout_drives
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until the driver is woken, the tick passes, or `until_ms` (a bake's end).
    pub async fn rollout_wakeup(&self, until_ms: Option<i64>) {
        let mut wait = DRIVER_TICK;
        if let Some(end) = until_ms {
            let left = Duration::from_millis((end - now_ms()).max(0) as u64);
            wait = wait.min(left);
        }
        tokio::select! {
            _ = self.rollouts_changed.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }

    /// The API view of a rollout and its hosts.
    fn rollout_view(&self, row: &RolloutRow, hosts: &[RolloutHostRow], at_ms: i64) -> Rollout {
        let judged = self.judge(row, hosts, at_ms);
        let mut waves = Vec::new();
        for (w, selector) in row.policy.waves.iter().enumerate() {
            let w = w as i64;
            let of_wave: Vec<&Judged<'_>> = judged.iter().filter(|j| j.row.wave == w).collect();
            let t = tally(of_wave.iter().copied());
            let max_failures = row.policy.max_failures.allowed(t.hosts);
            let state = if w > row.wave {
                WaveState::Waiting
            } else if w < row.wave {
                WaveState::Passed
            } else if row.state == RolloutState::Halted {
                WaveState::Failed
            } else if row.bake_started_at.is_some() {
                WaveState::Baking
            } else {
                WaveState::Open
            };
            waves.push(WaveStatus {
                selector: selector.to_string(),
                state,
                opened_at: (w == row.wave).then_some(row.wave_opened_at).flatten(),
                bake_ends_at: (w == row.wave)
                    .then(|| {
                        row.bake_started_at
                            .map(|b| b + row.policy.bake_secs as i64 * 1000)
                    })
                    .flatten(),
                failures: t.failed,
                max_failures,
                hosts: of_wave
                    .iter()
                    .map(|j| RolloutHost {
                        name: j.row.name.clone(),
                        state: j.state,
                        reason: j.reason.clone(),
                    })
                    .collect(),
            });
        }
        Rollout {
            release: row.release_id,
            policy_name: row.policy_name.clone(),
            policy: row.policy.clone(),
            state: row.state,
            reason: row.reason.clone(),
            author: row.author.clone(),
            created_at: row.created_at,
            updated_at: row.updated_at,
            wave: usize::try_from(row.wave).ok(),
            waves,
        }
    }
}
