//! The domain: who may do what, enrollment, hosts, releases and check-ins. Knows nothing of
//! HTTP; handlers call exactly one function here and map its result.
//!
//! The check-in path runs for every host on every poll, so it touches no database table
//! unless something changed: keys and desired state are cached in memory, and last-seen
//! times are batched and flushed by a background task.

mod activations;
mod attempts;
pub mod audit;
mod auth;
mod batch;
pub mod cache;
mod detach;
mod enrollment;
mod hosts;
mod nonces;
pub mod osquery;
mod rate;
mod releases;
mod rollouts;
pub mod secrets;
pub mod users;
mod windows;

pub use auth::{Principal, SignedRequest, fleet_wide_refusal};
pub use enrollment::{normalize_code, source_of};
pub use rollouts::{DRIVER_MIN_SPACING, DRIVER_TICK};

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use thiserror::Error;
use tokio::sync::RwLock;
use yeet_proto::{AuthError, ErrorCode};

use crate::store::{HostReport, Store, StoreError};

/// Settings the domain needs; the rest of the server config stays in `config`, which also
/// holds the defaults (`ServiceConfig::default()`).
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The origins (`scheme://host[:port]`) clients reach this server by; a request signed
    /// for any other is refused. Empty: the origin must match the request's `Host` header.
    pub public_origins: Vec<String>,
    /// How far a signed timestamp may be from the server's clock.
    pub skew_secs: i64,
    /// How long an approval code stays valid.
    pub code_ttl_secs: i64,
    /// Registrations that may wait for approval at once.
    pub max_pending: i64,
    /// Registrations of new keys allowed per client address: burst size, then one per `refill`.
    pub registration_burst: u32,
    pub registration_refill: Duration,
    /// A pending key re-registering sooner than this after its last registration is refused.
    pub reregister_interval: Duration,
    /// Live nonces one key may have in the replay cache (see `yeet_proto::NonceCache`).
    pub nonces_per_key: usize,
    /// Uploads to the embedded cache one key may run at once.
    pub max_uploads_per_key: usize,
    /// How often hosts are told to check in.
    pub checkin_interval_secs: u64,
    /// A host not seen for this long is shown offline.
    pub offline_after_secs: i64,
    /// Longest a check-in may be held open waiting for a change.
    pub max_long_poll_secs: u64,
    /// Binary caches (substituter URLs) hosts fetch systems from.
    pub caches: Vec<String>,
    /// Keys whose narinfo signatures a release must carry (checked when non-empty).
    pub trusted_cache_keys: Vec<nix_meta::PublicKey>,
    /// An approved host starts with the tags its agent suggested, besides the admin's.
    pub accept_suggested_tags: bool,
    /// The osquery remote API's limits and retention.
    pub osquery: osquery::OsquerySettings,
    /// The rollout policy of releases that name none; `None`: they reach every host at once.
    pub default_rollout_policy: Option<String>,
}

#[derive(Debug, Error)]
pub enum ServiceError {
    #[error("{0}")]
    Unauthorized(#[from] AuthError),
    /// A request refused for a reason the client can act on; the code decides the status.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("internal error")]
    Internal(StoreError),
    /// A failure of this machine (randomness, clock), logged and reported as internal.
    #[error("internal error: {0}")]
    System(String),
}

/// A database that cannot answer in time (its write lock held too long, its connections all
/// busy) is a `busy` answer that clients retry, not an internal error.
fn database_busy(e: &dyn std::fmt::Display) -> ServiceError {
    tracing::warn!(error = %e, "the database is busy; the request is answered 503 busy");
    ServiceError::refused(
        ErrorCode::Busy,
        "the server's database is busy; retry in a moment",
    )
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        if e.is_busy() {
            return database_busy(&e);
        }
        ServiceError::Internal(e)
    }
}

/// A batch of database work that failed: `busy` as above, anything else internal.
impl From<batch::BatchError> for ServiceError {
    fn from(e: batch::BatchError) -> Self {
        if e.busy {
            return database_busy(&e);
        }
        ServiceError::System(e.why)
    }
}

impl ServiceError {
    pub(crate) fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        ServiceError::Refused {
            code,
            message: message.into(),
        }
    }

    /// A failed file operation: a full disk is the operator's to fix and says so; anything
    /// else is internal.
    pub fn io(what: &str, e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::StorageFull {
            ServiceError::refused(ErrorCode::DiskFull, ErrorCode::DiskFull.meaning())
        } else {
            ServiceError::System(format!("{what}: {e}"))
        }
    }

    /// The code the client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServiceError::Unauthorized(a) => a.code(),
            ServiceError::Refused { code, .. } => *code,
            ServiceError::Internal(_) | ServiceError::System(_) => ErrorCode::Internal,
        }
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// Event payloads on the replica channel.
const EVENT_RELEASE: &str = "release:";
const EVENT_KEY: &str = "key:";
/// A secret or a grant changed: reload the hosts' digests.
const EVENT_SECRETS: &str = "secrets:";
/// A host detached or attached (`detach:<host id>`): reload its detachment.
const EVENT_DETACH: &str = "detach:";
/// A host's policy changed (`policy:<host id>`): answer its held check-in.
const EVENT_POLICY: &str = "policy:";

/// A host's newest desired system.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Desired {
    release_id: i64,
    store_path: String,
}

/// In-memory state shared by all requests of this process.
pub struct Service {
    store: Store,
    config: ServiceConfig,
    /// key id → who it is. Filled on first use; entries are dropped when a host or user
    /// changes, so a removed key stops working at once.
    keys: RwLock<HashMap<String, auth::KnownKey>>,
    /// host id → newest desired system.
    desired: RwLock<HashMap<i64, Desired>>,
    /// host id → the report last written, so unchanged reports cost no write.
    reports: Mutex<HashMap<i64, HostReport>>,
    /// host id → last check-in time not yet written.
    seen: Mutex<HashMap<i64, i64>>,
    nonces: Mutex<yeet_proto::NonceCache>,
    /// Accepted nonces, in the database: shared by replicas, kept across restarts.
    nonce_log: nonces::NonceLog,
    /// The hosts' last attempted systems, read in batches.
    attempts: attempts::AttemptReader,
    /// Source network → its token bucket for new registrations.
    registration_buckets: rate::RateLimiter<String>,
    /// Refusals recorded in the audit log per key: a burst, then one a second (a key
    /// flooding refused requests must not fill the log or hold its write lock).
    refusal_buckets: rate::RateLimiter<String>,
    /// Refusals per key left out of the audit log since its last recorded one.
    refusals_unrecorded: Mutex<HashMap<String, u64>>,
    /// Held while a new key is admitted (count, evict, insert), so the cap is exact.
    registration_admission: tokio::sync::Mutex<()>,
    /// Bumped whenever any host's desired system changes; long-polls wait on it.
    desired_changed: tokio::sync::watch::Sender<u64>,
    /// Bumped whenever what the hosts' listing shows changes here (a report, an
    /// activation, a host approved, renamed or removed); fleet watches wait on it.
    fleet_changed: tokio::sync::watch::Sender<u64>,
    /// Set when the server shuts down, so that long-polls answer at once.
    closing: tokio::sync::watch::Sender<bool>,
    /// The embedded binary cache, unless disabled.
    cache: Option<cache::EmbeddedCache>,
    /// Uploads running now, per key.
    uploads: std::sync::Arc<crate::shares::Shares>,
    /// Fleet watches held now, per key: each costs a read of the fleet at every change.
    watches: std::sync::Arc<crate::shares::Shares>,
    /// host id → the release signal of the check-in it holds (at most one per host).
    held_polls: Mutex<HashMap<i64, std::sync::Arc<tokio::sync::Notify>>>,
    /// host id → when its held check-in was abandoned (its connection closed unanswered),
    /// until it checks in again: such a host is shown offline a poll interval later.
    abandoned_holds: Mutex<HashMap<i64, i64>>,
    /// key id → the wake-up signal of the registration it holds (at most one per key): a
    /// newer registration of the key, or a change of the key (its approval), wakes it.
    held_registrations: Mutex<HashMap<String, std::sync::Arc<tokio::sync::Notify>>>,
    /// The server's age identity; secret endpoints need it.
    secrets: Option<secrets::SecretKeeper>,
    /// host id → digest of the secret versions granted to it (absent: none granted).
    secret_digests: RwLock<HashMap<i64, String>>,
    /// host id → its open detachment.
    detached: RwLock<HashMap<i64, yeet_proto::api::Detachment>>,
    /// The osquery remote API's nodes, limits and campaign deadline.
    osquery: osquery::OsqueryState,
    /// Wakes the rollout driver of this process (a rollout started, a host reported).
    rollouts_changed: tokio::sync::Notify,
    /// How many times this process's driver judged the active rollouts.
    rollout_drives: std::sync::atomic::AtomicU64,
    /// The maintenance windows, checked (read on every switch a check-in would start).
    windows: std::sync::RwLock<windows::Windows>,
}

pub use yeet_proto::clock::{unix_now as now, unix_now_ms as now_ms};

/// The fleet's desired state, host id → newest desired system, from the database.
async fn load_desired(store: &Store) -> Result<HashMap<i64, Desired>, StoreError> {
    let rows = store.desired_systems().await?;
    Ok(rows
        .into_iter()
        .map(|d| {
            (
                d.host_id,
                Desired {
                    release_id: d.release_id,
                    store_path: d.store_path,
                },
            )
        })
        .collect())
}

impl Service {
    /// Builds the service and loads the fleet's desired state into memory.
    pub async fn new(store: Store, config: ServiceConfig) -> Result<Service, StoreError> {
        // Before anything is accepted: other replicas' nonce expiry must honour this skew.
        store.announce_clock_skew(config.skew_secs).await?;
        let desired = load_desired(&store).await?;
        let secret_digests = secrets::load_digests(&store).await?;
        let detached = detach::load_detachments(&store).await?;
        let windows = windows::load_windows(&store).await?;
        let osquery = osquery::OsqueryState::new(
            config.osquery.clone(),
            config.registration_burst,
            config.registration_refill,
            store.latest_campaign_deadline().await?,
        );
        let registration_buckets =
            rate::RateLimiter::new(config.registration_burst, config.registration_refill);
        Ok(Service {
            nonces: Mutex::new(yeet_proto::NonceCache::new(
                config.skew_secs,
                config.nonces_per_key,
            )),
            nonce_log: nonces::NonceLog::start(store.clone()),
            attempts: attempts::start(store.clone()),
            uploads: crate::shares::Shares::new(usize::MAX, config.max_uploads_per_key),
            watches: crate::shares::Shares::new(usize::MAX, hosts::WATCHES_PER_KEY),
            store,
            config,
            keys: RwLock::new(HashMap::new()),
            desired: RwLock::new(desired),
            reports: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            registration_buckets,
            refusal_buckets: rate::RateLimiter::new(audit::REFUSAL_BURST, Duration::from_secs(1)),
            refusals_unrecorded: Mutex::new(HashMap::new()),
            registration_admission: tokio::sync::Mutex::new(()),
            desired_changed: tokio::sync::watch::Sender::new(0),
            fleet_changed: tokio::sync::watch::Sender::new(0),
            closing: tokio::sync::watch::Sender::new(false),
            cache: None,
            held_polls: Mutex::new(HashMap::new()),
            abandoned_holds: Mutex::new(HashMap::new()),
            held_registrations: Mutex::new(HashMap::new()),
            secrets: None,
            secret_digests: RwLock::new(secret_digests),
            detached: RwLock::new(detached),
            osquery,
            rollouts_changed: tokio::sync::Notify::new(),
            rollout_drives: std::sync::atomic::AtomicU64::new(0),
            windows: std::sync::RwLock::new(windows),
        })
    }

    /// Serves and accepts uploads into an embedded cache (hosts are told to use it).
    pub fn with_embedded_cache(mut self, cache: cache::EmbeddedCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Serves secrets with this identity.
    pub fn with_secrets(mut self, keeper: secrets::SecretKeeper) -> Self {
        self.secrets = Some(keeper);
        self
    }

    /// Makes held check-ins answer now; called when the server starts shutting down.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Re-reads the fleet's desired state from the database and wakes long-polls.
    pub async fn reload_desired(&self) -> Result<(), StoreError> {
        let fresh = load_desired(&self.store).await?;
        *self.desired.write().await = fresh;
        self.desired_changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Takes the opened entries of release `release_id` as the desired systems of their
    /// hosts, unless a host already follows a newer release, and answers those hosts' held
    /// check-ins. Entries are only ever opened, never closed again, so this is the whole
    /// change a release or a rollout's step makes: cheaper than reading the fleet's desired
    /// state anew.
    pub(crate) async fn apply_opened_entries(&self, release_id: i64) -> Result<(), StoreError> {
        let rows = self.store.opened_entries(release_id).await?;
        let mut changed = Vec::with_capacity(rows.len());
        {
            let mut desired = self.desired.write().await;
            for d in rows {
                if desired
                    .get(&d.host_id)
                    .is_none_or(|now| now.release_id <= d.release_id)
                {
                    changed.push(d.host_id);
                    desired.insert(
                        d.host_id,
                        Desired {
                            release_id: d.release_id,
                            store_path: d.store_path,
                        },
                    );
                }
            }
        }
        self.desired_changed_for(&changed);
        Ok(())
    }

    /// After the desired systems of `hosts` changed: answers their held check-ins, and
    /// only theirs. Waking every held check-in for a wave of a third of 20,000 hosts cost
    /// the other two thirds a look each, on the same cores that answer the wave.
    pub(crate) fn desired_changed_for(&self, hosts: &[i64]) {
        self.wake_held_polls(hosts);
        // Fleet watches show desired systems too.
        self.note_fleet_change();
    }

    /// Answers the held check-ins of `hosts` at once, so that they ask again.
    pub(crate) fn wake_held_polls(&self, hosts: &[i64]) {
        let held = lock(&self.held_polls);
        for host_id in hosts {
            if let Some(poll) = held.get(host_id) {
                // Stored as a permit if the check-in is between waits.
                poll.notify_one();
            }
        }
    }

    /// Applies an event from another replica (or `None`: events may have been missed).
    pub async fn handle_event(&self, event: Option<&str>) -> Result<(), StoreError> {
        match event {
            Some(e) if e.starts_with(EVENT_RELEASE) => {
                match e[EVENT_RELEASE.len()..].parse::<i64>() {
                    Ok(release) => self.apply_opened_entries(release).await,
                    Err(_) => self.reload_desired().await,
                }
            }
            Some(e) if e.starts_with(EVENT_SECRETS) => self.reload_secret_digests().await,
            Some(e) if e.starts_with(windows::EVENT_WINDOWS) => self.reload_windows().await,
            Some(e) if e.starts_with(EVENT_DETACH) => match e[EVENT_DETACH.len()..].parse() {
                Ok(host_id) => self.reload_detachment(host_id).await,
                Err(_) => self.reload_detachments().await,
            },
            Some(e) if e.starts_with(EVENT_POLICY) => {
                if let Ok(host_id) = e[EVENT_POLICY.len()..].parse() {
                    self.wake_held_polls(&[host_id]);
                }
                Ok(())
            }
            Some(e) if e.starts_with(osquery::EVENT_NODE) => {
                self.forget_node_key(&e[osquery::EVENT_NODE.len()..]).await;
                Ok(())
            }
            Some(e) if e.starts_with(osquery::EVENT_CAMPAIGN) => {
                if let Ok(deadline) = e[osquery::EVENT_CAMPAIGN.len()..].parse() {
                    self.note_campaign_deadline(deadline);
                }
                Ok(())
            }
            Some(e) => {
                if let Some(key) = e.strip_prefix(EVENT_KEY) {
                    self.keys.write().await.remove(key);
                    self.wake_held_registrations(Some(key));
                }
                Ok(())
            }
            None => {
                self.keys.write().await.clear();
                self.wake_held_registrations(None);
                self.forget_node_keys().await;
                self.note_campaign_deadline(self.store.latest_campaign_deadline().await?);
                self.reload_secret_digests().await?;
                self.reload_detachments().await?;
                self.reload_windows().await?;
                self.reload_desired().await
            }
        }
    }

    /// Tells other replicas that a key changed, so that they drop it from their caches.
    pub(crate) async fn announce_key_change(&self, key_id: &str) {
        self.forget_key(key_id).await;
        // A host approved, renamed or removed: the fleet's listing changed.
        self.note_fleet_change();
        self.wake_held_registrations(Some(key_id));
        if let Err(e) = self.store.notify(&format!("{EVENT_KEY}{key_id}")).await {
            tracing::warn!(error = %e, "could not notify other replicas of a key change");
        }
    }

    /// Wakes the fleet watches of this process: something the hosts' listing shows changed.
    pub(crate) fn note_fleet_change(&self) {
        self.fleet_changed.send_modify(|v| *v += 1);
    }

    /// Nonces currently remembered (for flood tests and metrics).
    pub fn remembered_nonces(&self) -> usize {
        lock(&self.nonces).len()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.config
    }

    /// Drops nonces that can no longer pass any replica's skew check from the database.
    pub async fn expire_nonces(&self) -> Result<u64, StoreError> {
        // A timestamp more than the skew in the past is refused before its nonce is looked at.
        self.store.delete_expired_nonces(now()).await
    }

    /// Writes batched last-seen times. Called periodically and at shutdown.
    pub async fn flush_last_seen(&self) -> Result<(), StoreError> {
        let batch: Vec<(i64, i64)> = lock(&self.seen).drain().collect();
        if batch.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.touch_hosts(&batch).await {
            // Put them back so the next flush retries; newer times win.
            let mut seen = lock(&self.seen);
            for (id, at) in batch {
                let slot = seen.entry(id).or_insert(at);
                *slot = (*slot).max(at);
            }
            return Err(e);
        }
        Ok(())
    }
}

/// Reads a std RwLock, recovering the data if a panicking thread poisoned it (as `lock`).
fn read<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Writes a std RwLock, recovering the data if a panicking thread poisoned it.
fn write<T>(l: &std::sync::RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Locks a std mutex, recovering the data if a panicking thread poisoned it: every map
/// guarded this way stays consistent after any single insert or remove.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
