//! Releases: immutable sets of host → store path. A host's desired system is the newest
//! release that names it.

use std::collections::BTreeMap;
use yeet_proto::ErrorCode;
use yeet_proto::api::{
    CreateReleaseRequest, Release, RetryRequest, RetryResponse, Role, RollbackRequest,
};
use yeet_proto::text::{clean, clean_line};

use super::auth::{Scope, require_role_in_scope};
use super::{Desired, Principal, Result, Service, ServiceError};
use crate::store::{NewRelease, ReleaseRow};

/// Releases listed when the caller gives no limit.
pub const DEFAULT_RELEASE_LIMIT: i64 = 50;
const MAX_MESSAGE_CHARS: usize = 4096;
/// A git revision is 40 (SHA-1) or 64 (SHA-256) hex digits; room for a `-dirty` suffix or a tag.
const MAX_REVISION_CHARS: usize = 128;

fn to_api(r: ReleaseRow) -> Release {
    Release {
        id: r.id,
        author: r.author,
        created_at: r.created_at,
        message: r.message,
        revision: r.revision,
        dirty: r.dirty,
        hosts: r.entries.into_iter().collect(),
    }
}

impl Service {
    pub async fn create_release(
        &self,
        principal: &Principal,
        req: CreateReleaseRequest,
    ) -> Result<Release> {
        let (author, scope) = require_role_in_scope(principal, Role::Publisher)?;
        if req.hosts.is_empty() {
            return Err(ServiceError::refused(
                ErrorCode::EmptyRelease,
                "a release must name at least one host",
            ));
        }
        if req.message.chars().count() > MAX_MESSAGE_CHARS {
            return Err(ServiceError::refused(
                ErrorCode::MessageTooLong,
                format!("the message is longer than {MAX_MESSAGE_CHARS} characters"),
            ));
        }
        if req
            .revision
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REVISION_CHARS)
        {
            return Err(ServiceError::refused(
                ErrorCode::RevisionTooLong,
                format!("the revision is longer than {MAX_REVISION_CHARS} characters"),
            ));
        }
        for (host, path) in &req.hosts {
            path.parse::<nix_meta::StorePath>().map_err(|e| {
                ServiceError::refused(ErrorCode::InvalidStorePath, format!("host {host}: {e}"))
            })?;
        }
        // A host outside a scoped publisher's scope is unknown to them, as a missing one.
        let known: BTreeMap<String, i64> = self
            .store
            .list_hosts()
            .await?
            .into_iter()
            .filter(|h| scope.covers(&crate::store::split_tags(&h.tags)))
            .map(|h| (h.name, h.id))
            .collect();
        let unknown: Vec<&str> = req
            .hosts
            .keys()
            .filter(|h| !known.contains_key(*h))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            let names: Vec<&str> = known.keys().map(String::as_str).collect();
            return Err(ServiceError::refused(
                ErrorCode::UnknownHostInRequest,
                format!(
                    "unknown host(s): {}; approved hosts are: {}",
                    unknown.join(", "),
                    if names.is_empty() {
                        "(none)".into()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
        self.check_release_signed(&req).await?;
        let entries: Vec<(i64, String, String)> = req
            .hosts
            .iter()
            .map(|(h, p)| (known[h], h.clone(), p.clone()))
            .collect();
        let rollout = self
            .rollout_for(req.rollout.as_deref(), req.now, &entries)
            .await?;
        let provenance = NewRelease {
            rollout,
            author: author.to_owned(),
            // Shown in operators' terminals and browsers: no escape sequences or overrides.
            message: clean(&req.message, MAX_MESSAGE_CHARS, true),
            revision: req.revision.map(|r| clean_line(&r, MAX_REVISION_CHARS)),
            dirty: req.dirty,
            rollback: false,
        };
        self.commit_release(principal, provenance, entries).await
    }

    /// Writes a validated release, updates the desired state and wakes every waiting host
    /// (here and, through the database, on other replicas).
    pub(super) async fn commit_release(
        &self,
        principal: &Principal,
        release: NewRelease,
        entries: Vec<(i64, String, String)>,
    ) -> Result<Release> {
        let created_at = super::now();
        let audit = self.audit_entry(
            principal,
            if release.rollback {
                "release.rollback"
            } else {
                "release.create"
            },
            entries.iter().map(|(_, name, _)| name.clone()).collect(),
            serde_json::json!({
                "message": release.message,
                "revision": release.revision,
                "dirty": release.dirty,
                "systems": entries
                    .iter()
                    .map(|(_, name, path)| (name.clone(), path.clone()))
                    .collect::<std::collections::BTreeMap<_, _>>(),
                "rollout": release.rollout.as_ref().map(|r| r.policy_name.clone()),
            }),
        );
        let id = self
            .store
            .insert_release(&release, created_at, &entries, &audit)
            .await?;
        if release.rollout.is_some() {
            // Its entries wait for their waves: the driver opens the first at once.
            self.note_fleet_change();
            self.wake_rollouts();
        } else {
            {
                let mut desired = self.desired.write().await;
                for (host_id, _, path) in &entries {
                    desired.insert(
                        *host_id,
                        Desired {
                            release_id: id,
                            store_path: path.clone(),
                        },
                    );
                }
            }
            let hosts: Vec<i64> = entries.iter().map(|(host_id, _, _)| *host_id).collect();
            self.desired_changed_for(&hosts);
        }
        if let Err(e) = self
            .store
            .notify(&format!("{}{id}", super::EVENT_RELEASE))
            .await
        {
            // The release is committed; other replicas catch up at their next event or reconnect.
            tracing::warn!(error = %e, release = id, "could not notify other replicas of a release");
        }
        tracing::info!(release = id, hosts = entries.len(), by = %release.author, "release created");
        let hosts = entries.into_iter().map(|(_, h, p)| (h, p)).collect();
        Ok(Release {
            id,
            author: release.author,
            created_at,
            message: release.message,
            revision: release.revision,
            dirty: release.dirty,
            hosts,
        })
    }

    /// One release; for a scoped user, its entries for their hosts, and a release naming
    /// none of them is unknown to them.
    pub async fn show_release(&self, principal: &Principal, id: i64) -> Result<Release> {
        let (_, scope) = require_role_in_scope(principal, Role::Viewer)?;
        Ok(to_api(self.release_in_scope(scope, id).await?))
    }

    pub(super) async fn release_in_scope(&self, scope: Scope<'_>, id: i64) -> Result<ReleaseRow> {
        let visible = self.host_ids_in_scope(scope).await?;
        self.store
            .release_by_id(id)
            .await?
            .and_then(|r| r.only_hosts(|h| visible.as_ref().is_none_or(|v| v.contains(&h))))
            .ok_or_else(|| {
                ServiceError::refused(
                    ErrorCode::UnknownRelease,
                    format!("no release {id}; see `yeet releases`"),
                )
            })
    }

    /// A new release that points hosts back at the systems they had before: from their
    /// newest release (`hosts`), or from release `release` (every host it named), each to
    /// the newest older system it confirmed (see `Store::rollback_target`). Rolling back
    /// again walks further back.
    pub async fn rollback(&self, principal: &Principal, req: RollbackRequest) -> Result<Release> {
        let (author, scope) = require_role_in_scope(principal, Role::Publisher)?;
        let targets: Vec<(i64, String, i64)> = match (req.release, req.hosts.is_empty()) {
            (Some(id), true) => {
                // A scoped user rolls back the release's entries for their hosts: the part
                // of it they can see.
                let release = self.release_in_scope(scope, id).await?;
                let mut t = Vec::new();
                // By host id: a name may belong to another machine since (renames, swaps).
                // Hosts removed since then, or out of scope now, are skipped.
                for host_id in release.host_ids {
                    if let Some(h) = self.store.host_by_id(host_id).await?
                        && scope.covers(&crate::store::split_tags(&h.tags))
                    {
                        t.push((h.id, h.name, id));
                    }
                }
                t
            }
            (None, false) => {
                let desired = self.desired.read().await.clone();
                let mut t = Vec::new();
                for name in &req.hosts {
                    let h = self.host_in_scope(scope, name).await?;
                    let newest = desired.get(&h.id).map(|d| d.release_id).ok_or_else(|| {
                        ServiceError::refused(
                            ErrorCode::NothingToRollBack,
                            format!("{name} has no release yet"),
                        )
                    })?;
                    t.push((h.id, h.name, newest));
                }
                t
            }
            _ => {
                return Err(ServiceError::refused(
                    ErrorCode::InvalidRollback,
                    "name hosts or a release, not both",
                ));
            }
        };
        let mut entries = Vec::new();
        let mut stuck = Vec::new();
        for (host_id, name, from) in targets {
            match self.store.rollback_target(host_id, from).await? {
                Some(path) => entries.push((host_id, name, path)),
                None => stuck.push(name),
            }
        }
        if !stuck.is_empty() {
            return Err(ServiceError::refused(
                ErrorCode::NothingToRollBack,
                format!(
                    "no older system that the host confirmed is left for {}; publish the system you want instead",
                    stuck.join(", ")
                ),
            ));
        }
        if entries.is_empty() {
            return Err(ServiceError::refused(
                ErrorCode::NothingToRollBack,
                "none of the release's hosts exist any more",
            ));
        }
        let what = match req.release {
            Some(id) => format!("rollback of release {id}"),
            None => format!("rollback of {}", req.hosts.join(", ")),
        };
        self.commit_release(
            principal,
            NewRelease {
                author: author.to_owned(),
                message: what,
                rollback: true,
                ..Default::default()
            },
            entries,
        )
        .await
    }

    /// Offers hosts their desired system once more, although they tried it (a cause fixed
    /// by hand: a key set, a disk freed). Hosts without a desired system are refused.
    pub async fn retry(&self, principal: &Principal, req: RetryRequest) -> Result<RetryResponse> {
        let (author, scope) = require_role_in_scope(principal, Role::Publisher)?;
        if req.hosts.is_empty() {
            return Err(ServiceError::refused(
                ErrorCode::NothingToRetry,
                "name the hosts to retry",
            ));
        }
        let desired = self.desired.read().await.clone();
        let mut ids = Vec::new();
        for name in &req.hosts {
            let h = self.host_in_scope(scope, name).await?;
            if !desired.contains_key(&h.id) {
                return Err(ServiceError::refused(
                    ErrorCode::NothingToRetry,
                    format!("{name} has no release yet: publish a system for it"),
                ));
            }
            ids.push(h.id);
        }
        let audit = self.audit_entry(
            principal,
            "release.retry",
            req.hosts.clone(),
            serde_json::json!({}),
        );
        self.store.forget_attempts(&ids, None, Some(&audit)).await?;
        tracing::info!(hosts = ?req.hosts, by = author, "retry: desired systems offered again");
        self.attempts_forgotten().await;
        Ok(RetryResponse { retried: req.hosts })
    }

    /// Wakes held check-ins here and on other replicas, after attempts were forgotten.
    pub(crate) async fn attempts_forgotten(&self) {
        self.desired_changed.send_modify(|v| *v += 1);
        if let Err(e) = self
            .store
            .notify(&format!("{}retry", super::EVENT_RELEASE))
            .await
        {
            tracing::warn!(error = %e, "could not tell other replicas of a retry");
        }
    }

    pub async fn list_releases(
        &self,
        principal: &Principal,
        host: Option<&str>,
        limit: Option<i64>,
    ) -> Result<Vec<Release>> {
        let (_, scope) = require_role_in_scope(principal, Role::Viewer)?;
        let visible = self.host_ids_in_scope(scope).await?;
        // The releases naming the host asked for, or any the caller may see; each shows
        // only the caller's hosts.
        let naming: Option<Vec<i64>> = match host {
            Some(name) => Some(vec![self.host_in_scope(scope, name).await?.id]),
            None => visible.as_ref().map(|v| v.iter().copied().collect()),
        };
        let limit = limit.unwrap_or(DEFAULT_RELEASE_LIMIT).clamp(1, 1000);
        Ok(self
            .store
            .list_releases(naming.as_deref(), limit)
            .await?
            .into_iter()
            .filter_map(|r| r.only_hosts(|h| visible.as_ref().is_none_or(|v| v.contains(&h))))
            .map(to_api)
            .collect())
    }
}
