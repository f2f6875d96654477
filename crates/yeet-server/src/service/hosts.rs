//! Hosts: listing, renaming, removal, and the check-in that every host makes on every poll.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use yeet_proto::ErrorCode;
use yeet_proto::api::TagHostRequest;
use yeet_proto::api::{
    Action, ActivationResult, AgentState, CheckinRequest, CheckinResponse, Detachment, Facts,
    HostInfo, HostState, MAX_WATCH_SECS, RebootOrder, RebootPolicy, Role,
};
use yeet_proto::names::{MAX_TAGS, tag_set, validate_host_name};
use yeet_proto::text::clean_line;

use super::auth::{Scope, require_host, require_role, require_role_in_scope};
use super::{Desired, Principal, Result, Service, ServiceError, lock, now};
use crate::store::{HostReport, HostRow, StoreError, join_tags, split_tags};

/// A host's state as the API shows it; `offline` when it has not been seen for the offline
/// threshold or its held check-in was abandoned a poll interval ago (see `offline_at`).
fn host_state(
    row: &HostRow,
    desired: Option<&str>,
    detached: bool,
    last_seen: Option<i64>,
    offline: bool,
) -> HostState {
    // How the newest attempt at the desired system ended, when it did not confirm.
    let failed_desired = row
        .last_result
        .map(|r| r.0)
        .filter(|r| *r != ActivationResult::Confirmed)
        .filter(|_| row.last_result_path.as_deref() == desired);
    match last_seen {
        None => HostState::New,
        Some(_) if offline => HostState::Offline,
        Some(_) if detached => HostState::Detached,
        Some(_) => match (row.state.0, failed_desired) {
            (AgentState::Updating, _) => HostState::Updating,
            (_, Some(ActivationResult::Untrusted)) => HostState::Untrusted,
            (_, Some(ActivationResult::Failed)) => HostState::Failed,
            (_, Some(_)) | (AgentState::RolledBack, None) => HostState::RolledBack,
            (AgentState::RebootRequired, None) => HostState::RebootRequired,
            (AgentState::Standby, None) => HostState::Standby,
        },
    }
}

/// Compare-and-set attempts of a tag change before it is answered busy: each failed one
/// means another change to the host's tags committed, so only a flood of changes to one
/// host runs out of them.
const TAG_ATTEMPTS: usize = 64;

impl Service {
    /// The API view of a host, with unflushed check-ins and cached desired state applied.
    pub(crate) async fn host_info(&self, row: HostRow) -> HostInfo {
        let pending_seen = lock(&self.seen).get(&row.id).copied();
        let last_seen = row.last_seen.max(pending_seen);
        let desired = self.desired.read().await.get(&row.id).cloned();
        let detached = self.detachment(row.id).await;
        let offline = self
            .offline_at(row.id, last_seen)
            .is_some_and(|at| now() >= at);
        let tags = crate::store::split_tags(&row.tags);
        // A switch it has to make, or a reboot it may take by itself, held back until a
        // maintenance window opens.
        let switch_pending = desired
            .as_ref()
            .is_some_and(|d| row.current_system.as_deref() != Some(d.store_path.as_str()));
        let reboot_pending = row.state.0 == AgentState::RebootRequired
            && row.policy().effective_reboot() == RebootPolicy::InWindow;
        let window_wait = ((switch_pending || reboot_pending) && detached.is_none())
            .then(|| self.window_wait(&tags, now()))
            .flatten();
        HostInfo {
            window_wait,
            state: host_state(
                &row,
                desired.as_ref().map(|d| d.store_path.as_str()),
                detached.is_some(),
                last_seen,
                offline,
            ),
            last_result: row.last_result.map(|r| r.0),
            last_result_system: row.last_result_path.clone(),
            policy: row.policy(),
            detached,
            name: row.name,
            key_id: row.key_id,
            current_system: row.current_system,
            desired_system: desired.as_ref().map(|d| d.store_path.clone()),
            desired_release: desired.map(|d| d.release_id),
            last_seen,
            approved_at: row.approved_at,
            tags,
            facts: Facts {
                os: row.os,
                arch: row.arch,
                agent_version: row.agent_version,
                hardware_uuid: row.hardware_uuid,
                trust_digest: String::new(),
                os_version: row.os_version,
                kernel: row.kernel,
                booted_at: row.booted_at,
                suggested_tags: crate::store::split_tags(&row.suggested_tags),
            },
        }
    }

    /// When a host last seen at `last_seen` counts as offline: the offline threshold after
    /// that, or sooner, a poll interval after its held check-in was abandoned (the
    /// connection closed without an answer: the machine went down or off the network)
    /// unless it checked in since. An agent that merely restarted checks in again within
    /// seconds.
    pub(super) fn offline_at(&self, host_id: i64, last_seen: Option<i64>) -> Option<i64> {
        let seen = last_seen?;
        let quiet = seen + self.config.offline_after_secs + 1;
        let abandoned = lock(&self.abandoned_holds)
            .get(&host_id)
            .copied()
            .filter(|at| *at >= seen)
            .map(|at| at + self.config.checkin_interval_secs as i64);
        Some(abandoned.map_or(quiet, |at| at.min(quiet)))
    }

    pub(crate) async fn host_named(&self, name: &str) -> Result<HostRow> {
        self.host_in_scope(Scope::Fleet, name).await
    }

    /// Every host, and when the first of those online goes offline (Unix time).
    async fn fleet(&self) -> Result<(Vec<HostInfo>, Option<i64>)> {
        let mut hosts = Vec::new();
        let mut next_offline: Option<i64> = None;
        for row in self.store.list_hosts().await? {
            let id = row.id;
            let info = self.host_info(row).await;
            if info.state != HostState::Offline
                && let Some(at) = self.offline_at(id, info.last_seen)
            {
                next_offline = Some(next_offline.map_or(at, |first| first.min(at)));
            }
            hosts.push(info);
        }
        Ok((hosts, next_offline))
    }

    /// The hosts' listing as a watch: held until it differs from the one tagged `seen`
    /// (see `fleet_tag`) or `wait_secs` pass; `None` when it is still the same then. Woken by
    /// this process's changes, by the moment a host goes offline, and, where other
    /// replicas may change the fleet unseen (PostgreSQL), every few seconds.
    pub async fn watch_hosts(
        &self,
        principal: &Principal,
        seen: Option<&str>,
        wait_secs: u64,
    ) -> Result<Option<(Vec<HostInfo>, String)>> {
        let (_, scope) = require_role_in_scope(principal, Role::Viewer)?;
        // Each held watch reads the whole fleet at every change: one key may not multiply
        // that without bound.
        let _watch = match principal {
            Principal::User { key_id, .. } if wait_secs > 0 => {
                Some(self.watches.take(key_id).map_err(|held| {
                    ServiceError::refused(
                        ErrorCode::RateLimited,
                        format!("this key already holds {held} fleet watches; end one first"),
                    )
                })?)
            }
            _ => None,
        };
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(wait_secs.min(MAX_WATCH_SECS));
        let mut changes = self.fleet_changed.subscribe();
        let mut desired = self.desired_changed.subscribe();
        let mut closing = self.closing.subscribe();
        loop {
            let (mut hosts, next_offline) = self.fleet().await?;
            // The tag covers what this caller sees only: a change elsewhere answers nothing.
            hosts.retain(|h| scope.covers(&h.tags));
            let tag = fleet_tag(&hosts);
            let now_instant = tokio::time::Instant::now();
            if seen != Some(tag.as_str()) {
                return Ok(Some((hosts, tag)));
            }
            if now_instant >= deadline || *closing.borrow() {
                return Ok(None);
            }
            // The first online host to go offline changes its state.
            let next_offline = next_offline
                .map(|at| now_instant + Duration::from_secs((at - now()).max(0) as u64));
            let mut wake = deadline.min(next_offline.unwrap_or(deadline));
            if self.store.is_shared() {
                wake = wake.min(now_instant + REPLICA_RECHECK);
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = desired.changed() => {}
                _ = closing.changed() => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
            // A release reaching many hosts changes the listing many times in a moment:
            // one read after the burst, not one per change.
            tokio::time::sleep(
                WATCH_SETTLE.min(deadline.saturating_duration_since(tokio::time::Instant::now())),
            )
            .await;
        }
    }

    pub async fn show_host(&self, principal: &Principal, name: &str) -> Result<HostInfo> {
        let (_, scope) = require_role_in_scope(principal, Role::Viewer)?;
        let row = self.host_in_scope(scope, name).await?;
        Ok(self.host_info(row).await)
    }

    /// The ids of the hosts a scope covers; `None` for the whole fleet (no list needed).
    pub(crate) async fn host_ids_in_scope(
        &self,
        scope: Scope<'_>,
    ) -> Result<Option<BTreeSet<i64>>> {
        if scope == Scope::Fleet {
            return Ok(None);
        }
        Ok(Some(
            self.store
                .list_hosts()
                .await?
                .into_iter()
                .filter(|h| scope.covers(&split_tags(&h.tags)))
                .map(|h| h.id)
                .collect(),
        ))
    }

    /// The host named `name`, if the caller's scope covers it; a host outside the scope is
    /// refused exactly as a host that does not exist, so that no answer tells them apart.
    pub(crate) async fn host_in_scope(&self, scope: Scope<'_>, name: &str) -> Result<HostRow> {
        match self.store.host_by_name(name).await? {
            Some(row) if scope.covers(&split_tags(&row.tags)) => Ok(row),
            _ => Err(ServiceError::refused(
                ErrorCode::UnknownHost,
                format!("no host named {name}; see `yeet status` for the fleet"),
            )),
        }
    }

    pub async fn rename_host(
        &self,
        principal: &Principal,
        old: &str,
        new: &str,
    ) -> Result<HostInfo> {
        let (admin, scope) = require_role_in_scope(principal, Role::Admin)?;
        validate_host_name(new)
            .map_err(|e| ServiceError::refused(ErrorCode::InvalidName, e.to_string()))?;
        // Only tags change a host's scope, and only unscoped admins set them: the host
        // checked here is the host renamed.
        self.host_in_scope(scope, old).await?;
        let audit = self.audit_entry(
            principal,
            "host.rename",
            vec![old.to_owned(), new.to_owned()],
            serde_json::json!({ "from": old, "to": new }),
        );
        let row = match self.store.rename_host(old, new, &audit).await {
            Ok(Some(row)) => row,
            Ok(None) => {
                return Err(self.host_named(old).await.err().unwrap_or_else(|| {
                    ServiceError::refused(ErrorCode::UnknownHost, old.to_owned())
                }));
            }
            Err(StoreError::Conflict(_)) => {
                return Err(ServiceError::refused(
                    ErrorCode::NameTaken,
                    format!("a host named {new} already exists"),
                ));
            }
            Err(e) => return Err(e.into()),
        };
        self.announce_key_change(&row.key_id).await;
        tracing::info!(old, new, by = admin, "host renamed");
        Ok(self.host_info(row).await)
    }

    /// Adds and removes a host's tags (`accept_suggested` adds those its agent suggests).
    /// Tried `TAG_ATTEMPTS` times against concurrent changes.
    pub async fn tag_host(
        &self,
        principal: &Principal,
        name: &str,
        req: &TagHostRequest,
    ) -> Result<HostInfo> {
        let admin = require_role(principal, Role::Admin)?;
        let invalid = |e: yeet_proto::names::InvalidTags| {
            ServiceError::refused(ErrorCode::InvalidTag, e.to_string())
        };
        let add = tag_set(&req.add).map_err(invalid)?;
        let remove = tag_set(&req.remove).map_err(invalid)?;
        // Compare-and-set: another operator's change in between is read again, not lost;
        // a host whose tags change under every attempt is answered busy, not looped on.
        for _ in 0..TAG_ATTEMPTS {
            let row = self.host_named(name).await?;
            let mut tags: BTreeSet<String> = split_tags(&row.tags).into_iter().collect();
            if req.accept_suggested {
                tags.extend(split_tags(&row.suggested_tags));
            }
            tags.extend(add.iter().cloned());
            tags.retain(|t| !remove.contains(t));
            if tags.len() > MAX_TAGS {
                return Err(invalid(yeet_proto::names::InvalidTags::TooMany(tags.len())));
            }
            let new = join_tags(&tags);
            let audit = self.audit_entry(
                principal,
                "host.tag",
                vec![name.to_owned()],
                serde_json::json!({
                    "add": add, "remove": remove, "accept_suggested": req.accept_suggested,
                    "from": split_tags(&row.tags), "to": split_tags(&new),
                }),
            );
            if new == row.tags {
                // Nothing to change, but the request is recorded as every other.
                self.store.record_audit(&audit).await?;
                return Ok(self.host_info(row).await);
            }
            match self
                .store
                .replace_host_tags(name, &row.tags, &new, now(), &audit)
                .await?
            {
                None => {
                    return Err(self.host_named(name).await.err().unwrap_or_else(|| {
                        ServiceError::refused(ErrorCode::UnknownHost, name.to_owned())
                    }));
                }
                Some((false, _)) => continue,
                Some((true, row)) => {
                    self.note_fleet_change();
                    // Secrets granted to a tag follow it: hosts hear of the change at once.
                    self.secrets_changed().await?;
                    tracing::info!(host = name, tags = %new, by = admin, "host tags changed");
                    return Ok(self.host_info(row).await);
                }
            }
        }
        Err(ServiceError::refused(
            ErrorCode::Busy,
            format!("{name}'s tags kept changing while this change was applied; retry"),
        ))
    }

    /// Removes a host. Its key stops working at once; its releases stay as history.
    pub async fn remove_host(&self, principal: &Principal, name: &str) -> Result<()> {
        let (admin, scope) = require_role_in_scope(principal, Role::Admin)?;
        self.host_in_scope(scope, name).await?;
        let audit = self.audit_entry(
            principal,
            "host.remove",
            vec![name.to_owned()],
            serde_json::json!({}),
        );
        let row = self.store.delete_host(name, &audit).await?.ok_or_else(|| {
            ServiceError::refused(ErrorCode::UnknownHost, format!("no host named {name}"))
        })?;
        self.announce_key_change(&row.key_id).await;
        self.desired.write().await.remove(&row.id);
        lock(&self.reports).remove(&row.id);
        lock(&self.seen).remove(&row.id);
        tracing::info!(host = name, by = admin, "host removed");
        Ok(())
    }

    /// True when the host's newest activation attempt was at `path`: it is not offered
    /// again. After a failure that would loop through fetch, switch and rollback forever;
    /// after a success the host is on it, or went off it on purpose (a local rollback, or a
    /// `boot`-mode activation waiting for its reboot), and yeet does not fight that. A
    /// release naming another path is offered as usual. Read from the database (batched:
    /// a release wakes every held check-in at once), only on check-ins that would start a
    /// switch.
    async fn already_attempted(&self, host_id: i64, path: &str) -> Result<bool> {
        let last = self.attempts.call(host_id).await?;
        Ok(last.as_deref() == Some(path))
    }

    /// What to tell a host running `current` to do: switch to its desired system, unless it
    /// runs it already, is detached (it runs what it chose; releases wait for it), has
    /// tried it already, or must wait for a maintenance window (then also when that opens,
    /// in Unix seconds).
    async fn offer(
        &self,
        host_id: i64,
        current: Option<&str>,
        desired: Option<&Desired>,
        detached: &Option<Detachment>,
    ) -> Result<(Action, Option<i64>)> {
        let candidate = desired
            .filter(|d| current != Some(d.store_path.as_str()))
            .filter(|_| detached.is_none());
        let Some(d) = candidate else {
            return Ok((Action::None, None));
        };
        if self.already_attempted(host_id, &d.store_path).await? {
            return Ok((Action::None, None));
        }
        // Only fleets with windows pay for reading the host's tags, and only on the
        // check-ins that would start a switch.
        if !self.windows().is_empty()
            && let Some(host) = self.store.host_by_id(host_id).await?
            && let Some(wait) = self.window_wait(&split_tags(&host.tags), now())
        {
            return Ok((Action::None, Some(wait.opens_at)));
        }
        Ok((
            Action::Switch {
                store_path: d.store_path.clone(),
                release_id: d.release_id,
                caches: self.config.caches.clone(),
                embedded_cache: self.cache.is_some(),
            },
            None,
        ))
    }

    /// For a host that reported `reboot-required`: the order to reboot now, when its
    /// reboot policy (its own declaration, else the admin's) is `in-window` and it is
    /// inside its window; or when its window opens (Unix seconds).
    async fn reboot_order(
        &self,
        host_id: i64,
        declared: Option<RebootPolicy>,
        desired: Option<&Desired>,
    ) -> Result<(Option<RebootOrder>, Option<i64>)> {
        // A host that declares `never` costs no read (boot-mode fleets sit reboot-required).
        if declared == Some(RebootPolicy::Never) {
            return Ok((None, None));
        }
        let Some(host) = self.store.host_by_id(host_id).await? else {
            return Ok((None, None));
        };
        if declared.unwrap_or(host.reboot_policy.0) != RebootPolicy::InWindow {
            return Ok((None, None));
        }
        Ok(match self.reboot_permit(&split_tags(&host.tags), now()) {
            Ok(reason) => (
                Some(RebootOrder {
                    reason,
                    release_id: desired.map(|d| d.release_id),
                }),
                None,
            ),
            Err(wait) => (None, Some(wait.opens_at)),
        })
    }

    /// Writes a host's report when it changed; otherwise only notes the time, for the
    /// batched last-seen flush (most check-ins write nothing).
    async fn record_report(&self, host_id: i64, report: HostReport) -> Result<()> {
        let t = now();
        // It is back (or never left): an earlier abandoned hold no longer counts.
        lock(&self.abandoned_holds).remove(&host_id);
        let changed = lock(&self.reports).get(&host_id) != Some(&report);
        if changed {
            self.store.update_host_report(host_id, &report, t).await?;
            lock(&self.reports).insert(host_id, report);
            lock(&self.seen).remove(&host_id);
            self.note_fleet_change();
            // A unit failing (or the host's system changing) may fail a rollout's gate.
            self.wake_rollouts();
        } else {
            lock(&self.seen).insert(host_id, t);
        }
        Ok(())
    }

    /// A host's check-in: record what it runs, answer what it should run. Costs no database
    /// write unless the report changed; last-seen is batched.
    pub async fn checkin(
        &self,
        principal: &Principal,
        req: CheckinRequest,
    ) -> Result<CheckinResponse> {
        let (host_id, host_name) = require_host(principal)?;
        for path in [&req.current_system, &req.booted_system]
            .into_iter()
            .flatten()
        {
            path.parse::<nix_meta::StorePath>()
                .map_err(|e| ServiceError::refused(ErrorCode::InvalidStorePath, e.to_string()))?;
        }
        let report = HostReport {
            current_system: req.current_system.clone(),
            booted_system: req.booted_system,
            state: req.state,
            // Free text from the host: short and printable, whatever it sends.
            os: clean_line(&req.facts.os, 64),
            arch: clean_line(&req.facts.arch, 64),
            agent_version: clean_line(&req.facts.agent_version, 64),
            hardware_uuid: clean_line(&req.facts.hardware_uuid, 64).to_ascii_uppercase(),
            trust_digest: clean_line(&req.facts.trust_digest, 64),
            os_version: clean_line(&req.facts.os_version, 64),
            kernel: clean_line(&req.facts.kernel, 64),
            // A boot in the future (or before 1970) is a broken clock, not a fact.
            booted_at: req.facts.booted_at.filter(|t| (0..=now()).contains(t)),
            suggested_tags: suggested_tags(&req.facts.suggested_tags),
            failed_units: req.failed_units.map(i64::from),
            declared_reboot: req.reboot_policy,
        };
        // The awaits before the hold are boxed: a future is laid out for its largest await,
        // and each held poll would otherwise carry their database work's room while it waits.
        Box::pin(self.record_report(host_id, report)).await?;
        // Long-poll: subscribe before looking, so that a release landing in between wakes us.
        let mut changes = self.desired_changed.subscribe();
        let mut closing = self.closing.subscribe();
        let hold = Duration::from_secs(req.wait_secs.min(self.config.max_long_poll_secs));
        let deadline = tokio::time::Instant::now() + hold;
        // One held check-in per host: a newer one releases this one (the agent restarted,
        // or someone replays its requests), so a host key cannot pile up connections.
        let held = HeldPoll::claim(&self.held_polls, host_id);
        let abandoned = AbandonedHold::watch(&self.abandoned_holds, &held);
        let answer = async {
            loop {
                let desired = self.desired.read().await.get(&host_id).cloned();
                let detached = self.detachment(host_id).await;
                let (action, window_opens) = Box::pin(self.offer(
                    host_id,
                    req.current_system.as_deref(),
                    desired.as_ref(),
                    &detached,
                ))
                .await?;
                // A host that needs a reboot, with nothing else to do, may be told to take it.
                let (reboot, reboot_opens) = if action == Action::None
                    && detached.is_none()
                    && req.state == AgentState::RebootRequired
                {
                    Box::pin(self.reboot_order(host_id, req.reboot_policy, desired.as_ref()))
                        .await?
                } else {
                    (None, None)
                };
                // A switch (or reboot) held for a window: the held check-in answers when it
                // opens, so that the host asks again and starts then.
                let deadline = match window_opens.into_iter().chain(reboot_opens).min() {
                    Some(at) => deadline.min(
                        tokio::time::Instant::now()
                            + Duration::from_secs((at - now()).max(0) as u64),
                    ),
                    None => deadline,
                };
                let secrets_digest = self.secrets_digest(host_id).await;
                // A host that holds secrets answers at once when its granted versions moved.
                let secrets_moved = req
                    .secrets_digest
                    .as_ref()
                    .is_some_and(|held| *held != secrets_digest);
                // A host that believes otherwise learns of its detachment's start or end at once.
                let detachment_moved = req.detached != detached.is_some();
                let done = action != Action::None
                    || reboot.is_some()
                    || secrets_moved
                    || detachment_moved
                    || tokio::time::Instant::now() >= deadline
                    || *closing.borrow()
                    || held.superseded();
                if done {
                    return Ok(CheckinResponse {
                        host: host_name.to_owned(),
                        action,
                        next_checkin_secs: self.config.checkin_interval_secs,
                        secrets_digest,
                        detached,
                        desired_system: desired.map(|d| d.store_path),
                        reboot,
                    });
                }
                tokio::select! {
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return Err(ServiceError::System("desired-state channel closed".into()));
                        }
                    }
                    _ = closing.changed() => {}
                    _ = held.released() => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        .await;
        abandoned.answered();
        answer
    }
}

/// Notes, unless told it was answered, that a host's held check-in ended without an answer:
/// the request's future was dropped because its connection closed. A hold that a newer
/// check-in of the host took over notes nothing: the host is still there.
struct AbandonedHold<'a> {
    abandoned: &'a Mutex<HashMap<i64, i64>>,
    held: &'a HeldPoll<'a, i64>,
    answered: bool,
}

impl<'a> AbandonedHold<'a> {
    fn watch(abandoned: &'a Mutex<HashMap<i64, i64>>, held: &'a HeldPoll<'a, i64>) -> Self {
        AbandonedHold {
            abandoned,
            held,
            answered: false,
        }
    }

    fn answered(mut self) {
        self.answered = true;
    }
}

impl Drop for AbandonedHold<'_> {
    fn drop(&mut self) {
        if !self.answered && !self.held.superseded() {
            lock(self.abandoned).insert(self.held.key, now());
        }
    }
}

/// Fleet watches (`GET /v1/hosts?wait=`) one key may hold at once: a few terminals and CI
/// jobs, not a flood.
pub(crate) const WATCHES_PER_KEY: usize = 8;

/// How often a held fleet watch reads the fleet again on a shared database, where changes
/// made through other replicas do not wake it.
const REPLICA_RECHECK: Duration = Duration::from_secs(5);
/// The tags a host suggests, as stored: the valid ones, at most `MAX_TAGS` (a host may
/// send anything; its suggestions are only shown, so the rest are dropped, not refused).
pub(super) fn suggested_tags(sent: &[String]) -> String {
    let valid: std::collections::BTreeSet<String> = sent
        .iter()
        .filter(|t| yeet_proto::names::validate_tag(t).is_ok())
        .take(yeet_proto::names::MAX_TAGS)
        .cloned()
        .collect();
    crate::store::join_tags(&valid)
}

/// How long a woken fleet watch lets further changes gather before it reads the fleet.
const WATCH_SETTLE: Duration = Duration::from_millis(200);

/// A short digest of what a listing shows, last-seen times aside (every check-in moves
/// them; a host going offline changes its state instead): the listing's `ETag`.
pub fn fleet_tag(hosts: &[HostInfo]) -> String {
    use sha2::Digest;
    let mut digest = sha2::Sha256::new();
    for host in hosts {
        let shown = HostInfo {
            last_seen: None,
            ..host.clone()
        };
        // Our own types serialise without fail.
        digest.update(serde_json::to_vec(&shown).unwrap_or_default());
        digest.update(b"\n");
    }
    hex::encode(&digest.finalize()[..16])
}

/// A claim to the one long-poll a host (by id) or a pending key (by key id) may hold;
/// released when a newer request of the same one claims it, so that retries never pile up
/// held requests.
pub(super) struct HeldPoll<'a, K: std::hash::Hash + Eq + Clone> {
    held: &'a Mutex<HashMap<K, std::sync::Arc<tokio::sync::Notify>>>,
    key: K,
    release: std::sync::Arc<tokio::sync::Notify>,
    superseded: std::sync::atomic::AtomicBool,
}

impl<'a, K: std::hash::Hash + Eq + Clone> HeldPoll<'a, K> {
    pub(super) fn claim(
        held: &'a Mutex<HashMap<K, std::sync::Arc<tokio::sync::Notify>>>,
        key: K,
    ) -> HeldPoll<'a, K> {
        let release = std::sync::Arc::new(tokio::sync::Notify::new());
        if let Some(older) = lock(held).insert(key.clone(), release.clone()) {
            // Stored as a permit if the older one is between waits.
            older.notify_one();
        }
        HeldPoll {
            held,
            key,
            release,
            superseded: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(super) async fn released(&self) {
        self.release.notified().await;
        self.superseded
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn superseded(&self) -> bool {
        self.superseded.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl<K: std::hash::Hash + Eq + Clone> Drop for HeldPoll<'_, K> {
    fn drop(&mut self) {
        let mut held = lock(self.held);
        if held
            .get(&self.key)
            .is_some_and(|n| std::sync::Arc::ptr_eq(n, &self.release))
        {
            held.remove(&self.key);
        }
    }
}
