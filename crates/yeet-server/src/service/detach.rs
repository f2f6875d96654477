//! Detachment: a host whose policy allows it may run a locally chosen system for a while.
//! The server records who asked and why, keeps recording releases for the host, answers
//! its check-ins with no switch while it lasts, and lets the host or an admin end it.

use std::collections::HashMap;
use yeet_proto::ErrorCode;
use yeet_proto::api::{DetachRequest, Detachment, HostInfo, HostPolicyChange, RebootPolicy, Role};
use yeet_proto::text::clean_line;

use super::auth::{require_host, require_role_in_scope};
use super::{EVENT_DETACH, EVENT_POLICY, Principal, Result, Service, ServiceError, now};
use crate::store::{DetachmentRow, Store, StoreError};

/// The longest reason and user name kept; the host sends free text.
const MAX_REASON: usize = 200;
const MAX_USER: usize = 64;

fn to_api(row: DetachmentRow) -> Detachment {
    Detachment {
        since: row.since,
        user: row.requested_by,
        reason: row.reason,
    }
}

/// host id → its open detachment, from the database.
pub(super) async fn load_detachments(
    store: &Store,
) -> Result<HashMap<i64, Detachment>, StoreError> {
    Ok(store
        .open_detachments()
        .await?
        .into_iter()
        .map(|row| (row.host_id, to_api(row)))
        .collect())
}

impl Service {
    /// The host's open detachment, if any (from memory: check-ins ask on every poll).
    pub(crate) async fn detachment(&self, host_id: i64) -> Option<Detachment> {
        self.detached.read().await.get(&host_id).cloned()
    }

    /// Re-reads every open detachment (after events may have been missed) and wakes held
    /// check-ins.
    pub(super) async fn reload_detachments(&self) -> Result<(), StoreError> {
        let fresh = load_detachments(&self.store).await?;
        *self.detached.write().await = fresh;
        self.desired_changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Re-reads one host's detachment and, when it changed, answers the host's held
    /// check-in, if any, at once. Only that host's: a host that detaches and attaches in a
    /// loop must not wake the fleet. A replica hears its own notifications too: those
    /// change nothing and wake nobody.
    pub(super) async fn reload_detachment(&self, host_id: i64) -> Result<(), StoreError> {
        let open = self.store.open_detachment(host_id).await?.map(to_api);
        let before = match open.clone() {
            Some(d) => self.detached.write().await.insert(host_id, d),
            None => self.detached.write().await.remove(&host_id),
        };
        if before != open {
            self.wake_held_polls(&[host_id]);
        }
        Ok(())
    }

    /// Applies a change of one host's detachment here and tells the other replicas.
    async fn detachment_changed(&self, host_id: i64) -> Result<()> {
        self.reload_detachment(host_id).await?;
        if let Err(e) = self.store.notify(&format!("{EVENT_DETACH}{host_id}")).await {
            tracing::warn!(error = %e, "could not notify other replicas of a detachment");
        }
        Ok(())
    }

    /// A host asks to detach: permitted when its policy allows it (idempotent: a host
    /// already detached gets its detachment back), refused with the reason otherwise.
    pub async fn detach(&self, principal: &Principal, req: DetachRequest) -> Result<Detachment> {
        let (host_id, host_name) = require_host(principal)?;
        let row =
            self.store.host_by_id(host_id).await?.ok_or_else(|| {
                ServiceError::refused(ErrorCode::UnknownKey, "this host was removed")
            })?;
        if row.allow_detach == 0 {
            return Err(ServiceError::refused(
                ErrorCode::DetachRefused,
                format!(
                    "the fleet's policy does not let {host_name} detach; an admin can allow it with `yeet host policy {host_name} --allow-detach`"
                ),
            ));
        }
        let row = DetachmentRow {
            host_id,
            since: now(),
            requested_by: clean_line(&req.user, MAX_USER),
            reason: clean_line(&req.reason, MAX_REASON),
        };
        let audit = self.audit_entry(
            principal,
            "host.detach",
            vec![host_name.to_owned()],
            serde_json::json!({ "user": row.requested_by, "reason": row.reason }),
        );
        let open = self.store.start_detachment(&row, &audit).await?;
        self.detachment_changed(host_id).await?;
        tracing::info!(host = host_name, user = %open.requested_by, reason = %open.reason, "host detached");
        Ok(to_api(open))
    }

    /// The host attaches again; a no-op when it was not detached.
    pub async fn attach_self(&self, principal: &Principal) -> Result<()> {
        let (host_id, host_name) = require_host(principal)?;
        let audit = self.audit_entry(
            principal,
            "host.attach",
            vec![host_name.to_owned()],
            serde_json::json!({}),
        );
        if self
            .store
            .end_detachment(host_id, now(), "host", &audit)
            .await?
        {
            self.detachment_changed(host_id).await?;
            tracing::info!(host = host_name, "host attached");
        } else {
            // Not detached: nothing changed, but the request is recorded as every other.
            self.store.record_audit(&audit).await?;
        }
        Ok(())
    }

    /// An admin ends a host's detachment; the host returns to its desired system at its
    /// next check-in (held check-ins answer at once).
    pub async fn attach_host(&self, principal: &Principal, name: &str) -> Result<HostInfo> {
        let (admin, scope) = require_role_in_scope(principal, Role::Admin)?;
        let row = self.host_in_scope(scope, name).await?;
        let by = format!("operator {admin}");
        let audit = self.audit_entry(
            principal,
            "host.attach",
            vec![name.to_owned()],
            serde_json::json!({}),
        );
        if !self
            .store
            .end_detachment(row.id, now(), &by, &audit)
            .await?
        {
            return Err(ServiceError::refused(
                ErrorCode::NotDetached,
                format!("{name} is not detached"),
            ));
        }
        self.detachment_changed(row.id).await?;
        tracing::info!(host = name, by = admin, "detachment ended by an operator");
        Ok(self.host_info(row).await)
    }

    /// Sets what the host may do on its own (the fields given). Denying detachment does
    /// not end one that is open: `yeet attach HOST` does, so that the two decisions stay
    /// separate.
    pub async fn set_host_policy(
        &self,
        principal: &Principal,
        name: &str,
        change: HostPolicyChange,
    ) -> Result<HostInfo> {
        let (admin, scope) = require_role_in_scope(principal, Role::Admin)?;
        let row = self.host_in_scope(scope, name).await?;
        if change == HostPolicyChange::default() {
            return Ok(self.host_info(row).await);
        }
        let audit = self.audit_entry(
            principal,
            "host.policy",
            vec![name.to_owned()],
            serde_json::to_value(change).unwrap_or_default(),
        );
        if !self.store.set_host_policy(row.id, &change, &audit).await? {
            return Err(self.host_named(name).await.err().unwrap_or_else(|| {
                ServiceError::refused(ErrorCode::UnknownHost, name.to_owned())
            }));
        }
        self.note_fleet_change();
        // A host waiting with a reboot it may now take hears of it at once, wherever its
        // check-in is held.
        self.wake_held_polls(&[row.id]);
        if let Err(e) = self
            .store
            .notify(&format!("{EVENT_POLICY}{}", row.id))
            .await
        {
            tracing::warn!(error = %e, "could not notify other replicas of a host policy");
        }
        tracing::info!(
            host = name,
            allow_detach = ?change.allow_detach,
            reboot = ?change.reboot.map(RebootPolicy::as_str),
            by = admin,
            "host policy set"
        );
        let row = self.host_named(name).await?;
        Ok(self.host_info(row).await)
    }
}
