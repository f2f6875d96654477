//! The audit log, as the domain writes and reads it: every state-changing action builds its
//! event here (`audit_entry`) and hands it to the store function that makes the change, so
//! both commit together; refusals are recorded by the HTTP layer (`record_refusal`).
//!
//! Where a request came from (address, nonce) is known to the HTTP layer, not to the
//! service functions' arguments: it is carried for the request's duration in a task-local
//! (`store::REQUEST`), which also counts the events the request appended, so that the
//! HTTP layer can tell a route that changed state without recording it.

use std::sync::atomic::Ordering;
use yeet_proto::audit::{AuditFilter, AuditPage, DONE};

use super::auth::require_role_in_scope;
use super::{Principal, Result, Service, ServiceError};
use crate::store::AuditEntry;
use yeet_proto::ErrorCode;
use yeet_proto::api::Role;

/// The most events one page lists, and about how many bytes of details it carries.
pub const MAX_AUDIT_PAGE: u32 = 1000;
const MAX_AUDIT_PAGE_BYTES: usize = 4 << 20;

pub use crate::store::{REQUEST, RequestOrigin};

/// Refusals one key may have recorded at once, before one a second (the authorization
/// matrix has one key refused on every operator route in a second or two).
pub(crate) const REFUSAL_BURST: u32 = 100;

/// The actor and key an event names for `principal`.
fn actor_of(principal: &Principal) -> (String, String) {
    match principal {
        Principal::User { name, key_id, .. } => (name.clone(), key_id.clone()),
        Principal::Host { name, key_id, .. } => (format!("host:{name}"), key_id.clone()),
        Principal::Registrant { public, .. } => {
            (principal.display_name(), public.key_id().to_string())
        }
    }
}

/// The event of a `yeet-server admin` command, run on the server host: its actor is
/// `local:` and the Unix user who ran it (`SUDO_USER` before `USER`).
pub fn local_entry(action: &str, details: serde_json::Value) -> AuditEntry {
    let user = ["SUDO_USER", "USER", "LOGNAME"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
        .unwrap_or_else(|| "unknown".to_owned());
    AuditEntry {
        at_ms: super::now_ms(),
        actor: format!("local:{}", yeet_proto::text::clean_line(&user, 64)),
        key_id: String::new(),
        action: action.to_owned(),
        outcome: DONE.to_owned(),
        hosts: Vec::new(),
        details,
        address: String::new(),
        nonce: String::new(),
    }
}

impl Service {
    /// The event of an action `principal` is about to carry out, for the store function
    /// that makes the change to append in its transaction.
    pub(crate) fn audit_entry(
        &self,
        principal: &Principal,
        action: &str,
        hosts: Vec<String>,
        details: serde_json::Value,
    ) -> AuditEntry {
        let (actor, key_id) = actor_of(principal);
        let (address, nonce) = REQUEST
            .try_with(|r| (r.address.clone(), r.nonce.clone()))
            .unwrap_or_default();
        AuditEntry {
            at_ms: super::now_ms(),
            actor,
            key_id,
            action: action.to_owned(),
            outcome: DONE.to_owned(),
            hosts,
            details,
            address,
            nonce,
        }
    }

    /// Records that `principal` was refused `action` (with the error's `code`), in a
    /// transaction of its own: nothing else was changed. Past `REFUSAL_BURST` at once, a
    /// key's refusals are counted instead, and the next one recorded names how many were
    /// not (`unrecorded_before`).
    pub async fn record_refusal(
        &self,
        principal: &Principal,
        action: &str,
        code: ErrorCode,
        method: &str,
        path: &str,
    ) -> Result<()> {
        let (_, key_id) = actor_of(principal);
        if !self.refusal_buckets.take(&key_id) {
            *super::lock(&self.refusals_unrecorded)
                .entry(key_id)
                .or_default() += 1;
            return Ok(());
        }
        let mut details = serde_json::json!({ "method": method, "path": path });
        let skipped = super::lock(&self.refusals_unrecorded).remove(&key_id);
        if let (Some(skipped), Some(map)) = (skipped, details.as_object_mut()) {
            map.insert("unrecorded_before".into(), skipped.into());
        }
        let mut entry = self.audit_entry(principal, action, Vec::new(), details);
        entry.outcome = code.as_str().to_owned();
        self.store.record_audit(&entry).await?;
        Ok(())
    }

    /// Events appended for the request being served so far (`None` outside a request).
    pub fn events_recorded() -> Option<usize> {
        REQUEST.try_with(|r| r.events.load(Ordering::Relaxed)).ok()
    }

    /// The audit log: every event for unscoped admins; for anyone else, the events about
    /// hosts they can see. Oldest first (the newest `limit` with `newest`), in pages.
    pub async fn list_audit(
        &self,
        principal: &Principal,
        filter: AuditFilter,
    ) -> Result<AuditPage> {
        let (name, scope) = require_role_in_scope(principal, Role::Viewer)?;
        let actor = name.to_owned();
        if let Some(host) = &filter.host {
            yeet_proto::names::validate_host_name(host)
                .map_err(|e| ServiceError::refused(ErrorCode::InvalidName, e.to_string()))?;
        }
        let sees_all = matches!(
            principal,
            Principal::User { role: Role::Admin, tags, .. } if tags.is_empty()
        );
        let visible: Option<Vec<i64>> = if sees_all {
            None
        } else {
            Some(match self.host_ids_in_scope(scope).await? {
                Some(ids) => ids.into_iter().collect(),
                // An unscoped viewer or publisher: every host.
                None => self
                    .store
                    .list_hosts()
                    .await?
                    .iter()
                    .map(|h| h.id)
                    .collect(),
            })
        };
        let limit = filter.limit.unwrap_or(100).clamp(1, MAX_AUDIT_PAGE);
        let (events, more) = self
            .store
            .list_audit(
                &filter,
                visible.as_deref().map(|ids| (ids, actor.as_str())),
                limit,
                MAX_AUDIT_PAGE_BYTES,
            )
            .await?;
        let next_after = (more && !filter.newest)
            .then(|| events.last().map(|e| e.seq))
            .flatten();
        Ok(AuditPage { events, next_after })
    }

    /// Drops audit events older than `days` (with a checkpoint event that keeps the
    /// chain verifiable); returns how many went.
    pub async fn expire_audit_events(&self, days: u32) -> Result<i64> {
        let cutoff_ms = super::now_ms().saturating_sub(i64::from(days).saturating_mul(86_400_000));
        let mut checkpoint = local_entry(
            yeet_proto::audit::CHECKPOINT,
            serde_json::json!({ "retention_days": days }),
        );
        checkpoint.actor = yeet_proto::audit::SERVER_ACTOR.to_owned();
        Ok(self
            .store
            .drop_audit_before(cutoff_ms, &checkpoint)
            .await?
            .unwrap_or(0))
    }
}
