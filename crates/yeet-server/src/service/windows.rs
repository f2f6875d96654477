//! Maintenance windows: admins name them (`yeet window set`), the server keeps them in
//! memory, and withholds the switch of a host that a window covers until one of its
//! windows is open; rollouts defer such hosts the same way.

use std::collections::BTreeMap;
use std::sync::Arc;
use yeet_proto::ErrorCode;
use yeet_proto::api::Role;
use yeet_proto::rollout::{RolloutPolicy, validate_policy_name};
use yeet_proto::windows::{MaintenanceWindow, NamedWindow, Schedule, WindowWait, wait_for_window};

use super::audit::local_entry;
use super::auth::{require_role, require_role_in_scope};
use super::{Principal, Result, Service, ServiceError, now};
use crate::store::{Store, StoreError};

/// Who set a policy or window the config file declares.
const DECLARED_BY: &str = "config file";

/// Event payload on the replica channel: the windows changed.
pub(super) const EVENT_WINDOWS: &str = "windows:";

/// The windows, checked, by name.
pub(super) type Windows = Arc<Vec<(String, Schedule)>>;

/// Reads the windows from the database. A stored window that no longer checks (a time zone
/// dropped from a newer tz database) is left out and logged: it withholds nothing.
pub(super) async fn load_windows(store: &Store) -> Result<Windows, StoreError> {
    let mut out = Vec::new();
    for w in store.list_windows().await? {
        match w.spec.schedule() {
            Ok(s) => out.push((w.name, s)),
            Err(e) => {
                tracing::warn!(window = %w.name, error = %e, "a stored maintenance window does not check; it is ignored until set again")
            }
        }
    }
    Ok(Arc::new(out))
}

impl Service {
    /// Sets the policies and windows the config file declares, where the database holds
    /// another version (or none), each with an audit event naming the config file as its
    /// cause. Called at start: a fleet's flake (the NixOS module) carries them. Policies
    /// and windows not declared are left alone.
    pub async fn apply_declared(
        &self,
        policies: &BTreeMap<String, RolloutPolicy>,
        windows: &BTreeMap<String, MaintenanceWindow>,
    ) -> Result<(), StoreError> {
        let at = now();
        for (name, policy) in policies {
            if self.store.policy(name).await?.as_ref() != Some(policy) {
                let audit = local_entry(
                    "rollout.policy.set",
                    serde_json::json!({ "policy": name, "spec": policy, "cause": "declared in the config file" }),
                );
                self.store
                    .set_policy(name, policy, at, DECLARED_BY, &audit)
                    .await?;
            }
        }
        let stored: BTreeMap<String, MaintenanceWindow> = self
            .store
            .list_windows()
            .await?
            .into_iter()
            .map(|w| (w.name, w.spec))
            .collect();
        for (name, window) in windows {
            if stored.get(name) != Some(window) {
                let audit = local_entry(
                    "window.set",
                    serde_json::json!({ "window": name, "spec": window, "cause": "declared in the config file" }),
                );
                self.store
                    .set_window(name, window, at, DECLARED_BY, &audit)
                    .await?;
            }
        }
        self.reload_windows().await
    }

    /// Whether a host with `tags` must wait for a window at `at` (Unix seconds).
    pub(crate) fn window_wait(&self, tags: &[String], at: i64) -> Option<WindowWait> {
        let windows = self.windows();
        if windows.is_empty() {
            return None;
        }
        wait_for_window(windows.iter().map(|(n, s)| (n.as_str(), s)), tags, at)
    }

    /// Whether a host with `tags` may reboot at `at`: why it may (for the reboot order),
    /// or the window it waits for.
    pub(crate) fn reboot_permit(
        &self,
        tags: &[String],
        at: i64,
    ) -> std::result::Result<String, WindowWait> {
        let windows = self.windows();
        if let Some(wait) = wait_for_window(windows.iter().map(|(n, s)| (n.as_str(), s)), tags, at)
        {
            return Err(wait);
        }
        Ok(
            match windows
                .iter()
                .find(|(_, s)| s.covers(tags) && s.is_open(at))
            {
                Some((name, _)) => format!("inside maintenance window `{name}`"),
                None => "no maintenance window covers the host".to_owned(),
            },
        )
    }

    pub(super) fn windows(&self) -> Windows {
        super::read(&self.windows).clone()
    }

    pub(crate) async fn reload_windows(&self) -> Result<(), StoreError> {
        let fresh = load_windows(&self.store).await?;
        *super::write(&self.windows) = fresh;
        // A window gone or moved may let held switches through now.
        self.desired_changed.send_modify(|v| *v += 1);
        self.wake_rollouts();
        Ok(())
    }

    async fn windows_changed(&self) -> Result<()> {
        self.reload_windows().await?;
        if let Err(e) = self.store.notify(EVENT_WINDOWS).await {
            tracing::warn!(error = %e, "could not tell other replicas of a window change");
        }
        Ok(())
    }

    /// `yeet window set NAME ...` (admins): stores or replaces a window.
    pub async fn set_window(
        &self,
        principal: &Principal,
        name: &str,
        window: MaintenanceWindow,
    ) -> Result<NamedWindow> {
        let author = require_role(principal, Role::Admin)?;
        validate_policy_name(name)
            .map_err(|e| e.replace("policy name", "window name"))
            .and_then(|()| window.schedule().map(drop))
            .map_err(|e| ServiceError::refused(ErrorCode::InvalidWindow, e))?;
        let audit = self.audit_entry(
            principal,
            "window.set",
            vec![],
            serde_json::json!({ "window": name, "spec": window }),
        );
        let at = now();
        self.store
            .set_window(name, &window, at, author, &audit)
            .await?;
        self.windows_changed().await?;
        Ok(NamedWindow {
            name: name.to_owned(),
            window,
            updated_at: at,
            updated_by: author.to_owned(),
        })
    }

    pub async fn list_windows(&self, principal: &Principal) -> Result<Vec<NamedWindow>> {
        require_role_in_scope(principal, Role::Viewer)?;
        Ok(self
            .store
            .list_windows()
            .await?
            .into_iter()
            .map(|w| NamedWindow {
                name: w.name,
                window: w.spec,
                updated_at: w.updated_at,
                updated_by: w.updated_by,
            })
            .collect())
    }

    pub async fn remove_window(&self, principal: &Principal, name: &str) -> Result<()> {
        require_role(principal, Role::Admin)?;
        let audit = self.audit_entry(
            principal,
            "window.remove",
            vec![],
            serde_json::json!({ "window": name }),
        );
        if !self.store.remove_window(name, &audit).await? {
            return Err(ServiceError::refused(
                ErrorCode::UnknownWindow,
                format!("no maintenance window named {name:?}; `yeet window list` shows them"),
            ));
        }
        self.windows_changed().await
    }
}
