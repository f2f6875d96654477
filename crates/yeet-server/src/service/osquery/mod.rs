//! The osquery remote API, node side: enrollment with the yeet secret `osquery-enroll`,
//! node keys (random, stored as SHA-256 hashes, cached in memory), per-node rate limits, and
//! the config each node is served. Logs, distributed queries and carves are in `ingest`.
//!
//! Trust: the enroll secret is the only credential osqueryd has, and the node key the
//! only one after enrollment. A node is linked to a yeet host by the hostname it reports,
//! which proves nothing: links are a convenience for operators, never an authorization,
//! and a second node claiming an already-linked host stays unlinked.

mod admin;
mod forward;
mod ingest;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{RwLock, Semaphore, SemaphorePermit};
use yeet_proto::ErrorCode;

use super::rate::RateLimiter;
use super::{Result, Service, ServiceError, lock, now};
use crate::store::{Enrolled, NodeEnrollment, NodeRow, StoreError};
use osquery_tls::config::Config;
use osquery_tls::enroll::{EnrollRequest, EnrollResponse};

pub use ingest::MAX_LOG_LINE_BYTES;

/// The yeet secret whose content nodes must present to enroll.
pub const ENROLL_SECRET_NAME: &str = "osquery-enroll";
/// Event payload when a node's key changed (`osquery-node:<old key hash>`).
pub(crate) const EVENT_NODE: &str = "osquery-node:";
/// Event payload when a campaign was created (`osquery-campaign:<deadline>`).
pub(crate) const EVENT_CAMPAIGN: &str = "osquery-campaign:";
/// Longest host identifier accepted (osquery's are hostnames or UUIDs).
const MAX_IDENTIFIER_LEN: usize = 255;
/// Requests from nodes whose bodies are inflated, scanned and parsed at once. Each holds at
/// most `max_body_bytes` of inflated body; the rest wait, and after [`PARSE_WAIT`] are told
/// to retry (osqueryd keeps what it meant to send).
const PARALLEL_PARSES: usize = 2;
const PARSE_WAIT: Duration = Duration::from_secs(10);
/// How long "osquery is (not) set up" is believed before the database is asked again.
const SET_UP_CHECK_EVERY: Duration = Duration::from_secs(2);

/// The `[osquery]` section of the server config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OsquerySettings {
    /// Largest request body from a node, compressed and inflated alike. osqueryd's log
    /// batches (`--logger_tls_max_lines` 1024) are rarely above a megabyte.
    pub max_body_bytes: usize,
    /// Days log lines are kept.
    pub log_retention_days: u64,
    /// Requests one node may make at once, then one per `node_refill_ms`. Carve blocks of
    /// an announced carve do not count: osqueryd never resends a refused block.
    pub node_burst: u32,
    pub node_refill_ms: u64,
    /// Largest carve block and whole carve accepted, and open carves per node.
    pub max_block_bytes: u64,
    pub max_carve_bytes: u64,
    pub max_open_carves: i64,
    /// After a node is sent a distributed query it reads every second for this long, so
    /// that follow-up queries start at once (osquery's `accelerate`).
    pub accelerate_secs: u64,
    /// Append every result line, as JSON lines, to this file (for a SIEM's file shipper).
    pub forward_file: Option<std::path::PathBuf>,
    /// Post every result line, as newline-delimited JSON batches, to this URL.
    pub forward_url: Option<String>,
    /// An enrollment under the identifier of an enrolled node is refused until that node's
    /// key has been silent this long, so that nobody holding the enroll secret can take
    /// over a live node.
    pub reenroll_quiet_secs: u64,
    /// Log bytes one node may send per hour (lines as stored), in bursts of up to ten
    /// minutes' worth (at least one whole body), and may have stored at once (until
    /// `log_retention_days` expires them). Over either, its batches are refused and osqueryd
    /// keeps them buffered and retries.
    pub node_log_bytes_per_hour: u64,
    pub node_log_bytes_stored: u64,
}

impl Default for OsquerySettings {
    fn default() -> Self {
        OsquerySettings {
            max_body_bytes: 8 << 20,
            log_retention_days: 30,
            node_burst: 120,
            node_refill_ms: 200,
            max_block_bytes: 8 << 20,
            max_carve_bytes: 1 << 30,
            max_open_carves: 4,
            accelerate_secs: 60,
            forward_file: None,
            forward_url: None,
            reenroll_quiet_secs: 600,
            node_log_bytes_per_hour: 64 << 20,
            node_log_bytes_stored: 512 << 20,
        }
    }
}

/// An authenticated node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: i64,
    pub host_identifier: String,
}

/// The osquery side's in-memory state.
pub(crate) struct OsqueryState {
    settings: OsquerySettings,
    /// node key hash → node. Filled on first use; an entry is dropped when its node
    /// enrolls again or is removed (on every replica, through events).
    nodes: RwLock<HashMap<String, Node>>,
    /// node id → last request time not yet written.
    seen: Mutex<HashMap<i64, i64>>,
    per_node: RateLimiter<i64>,
    /// Log bytes per node: a token a byte.
    log_bytes: RateLimiter<i64>,
    /// Enrollments per source network (the endpoint is open to anyone).
    per_source: RateLimiter<String>,
    /// The latest deadline of any campaign: reads skip the database once it passed.
    campaign_deadline: AtomicI64,
    /// Where result lines are forwarded, if anywhere.
    forwarder: forward::Forwarder,
    /// Bounds the memory that node bodies take while they are read into requests.
    parses: Semaphore,
    /// Whether the enroll secret exists, and when that was read.
    set_up: Mutex<Option<(Instant, bool)>>,
}

/// Proof that an enrollment presented the enroll secret; only [`Service`] makes one.
pub struct EnrollAdmission(());

impl OsqueryState {
    pub(crate) fn new(
        settings: OsquerySettings,
        enroll_burst: u32,
        enroll_refill: Duration,
        campaign_deadline: i64,
    ) -> Self {
        OsqueryState {
            per_node: RateLimiter::new(
                settings.node_burst,
                Duration::from_millis(settings.node_refill_ms),
            ),
            per_source: RateLimiter::new(enroll_burst, enroll_refill),
            log_bytes: {
                let per_hour = settings.node_log_bytes_per_hour.max(1);
                let burst = (per_hour / 6).max(settings.max_body_bytes as u64);
                RateLimiter::new(
                    u32::try_from(burst).unwrap_or(u32::MAX),
                    Duration::from_secs_f64(3600.0 / per_hour as f64),
                )
            },
            forwarder: forward::Forwarder::new(
                settings.forward_file.clone(),
                settings.forward_url.clone(),
            ),
            settings,
            nodes: RwLock::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            campaign_deadline: AtomicI64::new(campaign_deadline),
            parses: Semaphore::new(PARALLEL_PARSES),
            set_up: Mutex::new(None),
        }
    }
}

/// The hex SHA-256 of a node key: what the database holds.
fn key_hash(node_key: &str) -> String {
    hex::encode(Sha256::digest(node_key.as_bytes()))
}

fn node_invalid(message: &str) -> ServiceError {
    ServiceError::refused(ErrorCode::OsqueryUnauthorized, message)
}

fn invalid_request(message: impl Into<String>) -> ServiceError {
    ServiceError::refused(ErrorCode::InvalidOsqueryRequest, message)
}

/// A fresh node key: 32 random bytes, hex (stronger than the UUIDv4 osquery servers use).
fn fresh_node_key() -> Result<String> {
    let mut raw = [0u8; 32];
    getrandom::getrandom(&mut raw)
        .map_err(|e| ServiceError::System(format!("no randomness for a node key: {e}")))?;
    Ok(hex::encode(raw))
}

impl Service {
    pub(crate) fn osquery_settings(&self) -> &OsquerySettings {
        &self.osquery.settings
    }

    /// Refuses every node request while osquery is off (no enroll secret), before anything of
    /// the request is read. The answer is cached for a moment, so a flood costs no queries.
    pub async fn osquery_check_set_up(&self) -> Result<()> {
        let cached = *lock(&self.osquery.set_up);
        let on = match cached {
            Some((at, on)) if at.elapsed() < SET_UP_CHECK_EVERY => on,
            _ => {
                let on = self
                    .store
                    .secret_by_name(ENROLL_SECRET_NAME)
                    .await?
                    .is_some();
                *lock(&self.osquery.set_up) = Some((Instant::now(), on));
                on
            }
        };
        if on {
            Ok(())
        } else {
            Err(ServiceError::refused(
                ErrorCode::OsqueryNotSetUp,
                ErrorCode::OsqueryNotSetUp.meaning(),
            ))
        }
    }

    /// Forgets whether osquery is set up (the enroll secret was added or removed here).
    pub(crate) fn forget_osquery_set_up(&self) {
        *lock(&self.osquery.set_up) = None;
    }

    /// A turn to read a node's body into memory; `busy` when none comes within a while.
    pub async fn osquery_parse_permit(&self) -> Result<SemaphorePermit<'_>> {
        match tokio::time::timeout(PARSE_WAIT, self.osquery.parses.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ServiceError::refused(
                ErrorCode::Busy,
                "the server is reading other osquery requests; osqueryd retries later",
            )),
        }
    }

    /// The node a request's key belongs to, after its rate limit; `NodeInvalid` for an
    /// unknown key, which makes osqueryd enroll again.
    pub async fn osquery_node(&self, node_key: &str) -> Result<Node> {
        let node = self.osquery_node_unlimited(node_key).await?;
        if !self.osquery.per_node.take(&node.id) {
            return Err(ServiceError::refused(
                ErrorCode::RateLimited,
                "too many requests from this node; osqueryd retries later",
            ));
        }
        Ok(node)
    }

    /// As `osquery_node`, without taking from the node's rate limit.
    async fn osquery_node_unlimited(&self, node_key: &str) -> Result<Node> {
        if node_key.is_empty() || node_key.len() > 128 {
            return Err(node_invalid("no valid node_key; enroll again"));
        }
        let hash = key_hash(node_key);
        let cached = self.osquery.nodes.read().await.get(&hash).cloned();
        let node = match cached {
            Some(node) => node,
            None => {
                let row = self
                    .store
                    .node_by_key_hash(&hash)
                    .await?
                    .ok_or_else(|| node_invalid("unknown node_key; enroll again"))?;
                let node = Node {
                    id: row.id,
                    host_identifier: row.host_identifier,
                };
                self.osquery.nodes.write().await.insert(hash, node.clone());
                node
            }
        };
        lock(&self.osquery.seen).insert(node.id, now());
        Ok(node)
    }

    /// Forgets a node key (after re-enrollment, here or on another replica).
    pub(crate) async fn forget_node_key(&self, hash: &str) {
        self.osquery.nodes.write().await.remove(hash);
    }

    /// Forgets every cached node key (events may have been missed).
    pub(crate) async fn forget_node_keys(&self) {
        self.osquery.nodes.write().await.clear();
    }

    /// Admits an enrollment from `source` that presents the enroll secret, within the
    /// source network's rate limit: the check made before the rest of its body is read.
    pub async fn osquery_admit_enrollment(
        &self,
        presented_secret: &str,
        source: &str,
    ) -> Result<EnrollAdmission> {
        if !source.is_empty() && !self.osquery.per_source.take(&source.to_owned()) {
            return Err(ServiceError::refused(
                ErrorCode::RateLimited,
                "too many enrollments from this network; osqueryd retries later",
            ));
        }
        self.check_enroll_secret(presented_secret).await?;
        Ok(EnrollAdmission(()))
    }

    /// Enrolls an admitted node. A known `host_identifier` gets a new key (osqueryd
    /// re-enrolls after losing its key) and its old key stops working.
    pub async fn osquery_enroll(
        &self,
        _admitted: EnrollAdmission,
        req: EnrollRequest,
    ) -> Result<EnrollResponse> {
        let identifier = req.host_identifier.trim();
        if identifier.is_empty()
            || identifier.len() > MAX_IDENTIFIER_LEN
            || identifier.chars().any(char::is_control)
        {
            return Err(invalid_request(
                "host_identifier must be 1 to 255 printable characters",
            ));
        }
        let node_key = fresh_node_key()?;
        let details = &req.host_details;
        let clip = |s: Option<String>| s.map(|s| s.chars().take(255).collect()).unwrap_or_default();
        let enrollment = NodeEnrollment {
            host_identifier: identifier.to_owned(),
            node_key_hash: key_hash(&node_key),
            hostname: clip(details.hostname()),
            hardware_uuid: clip(details.hardware_uuid()).to_ascii_uppercase(),
            platform: req
                .platform_type
                .and_then(osquery_tls::enroll::platform_name)
                .unwrap_or_default()
                .to_owned(),
            os_name: clip(details.os_name()),
            osquery_version: clip(details.osquery_version()),
            at: now(),
        };
        // The node's last requests here count: its batched last-seen time goes first.
        self.flush_node_last_seen().await?;
        let quiet = i64::try_from(self.osquery.settings.reenroll_quiet_secs).unwrap_or(i64::MAX);
        let node = match self.store.enroll_node(&enrollment, quiet).await? {
            Enrolled::Refused { last_seen } => {
                tracing::warn!(node = %identifier, last_seen, "refused an enrollment under the identifier of a node that is still checking in");
                return Err(ServiceError::refused(
                    ErrorCode::OsqueryNodeInUse,
                    format!(
                        "the node {identifier:?} checked in {}s ago and keeps its key; a reinstalled machine may enroll under it once the old key has been silent for {quiet}s",
                        now().saturating_sub(last_seen)
                    ),
                ));
            }
            Enrolled::New(node) => {
                self.link_node(&node, true).await?;
                node
            }
            Enrolled::Again {
                node,
                old_key_hash,
                kept_link,
            } => {
                self.forget_node_key(&old_key_hash).await;
                if let Err(e) = self
                    .store
                    .notify(&format!("{EVENT_NODE}{old_key_hash}"))
                    .await
                {
                    tracing::warn!(error = %e, "could not tell other replicas of a node's new key");
                }
                if !kept_link {
                    tracing::warn!(node = %node.host_identifier, "a node enrolled again without its hardware UUID; it is unlinked from its host unless that host's agent reports the UUID it claims");
                    // Its name proves nothing: only the hardware UUID a host's own agent
                    // reports links it again.
                    self.link_node(&node, false).await?;
                }
                node
            }
        };
        tracing::info!(node = %node.host_identifier, enrollments = node.enrollments, "osquery node enrolled");
        Ok(EnrollResponse::new(node_key))
    }

    /// Refuses an enrollment whose secret is not the content of `osquery-enroll`. The
    /// comparison is of SHA-256 digests, so its time says nothing about the secret.
    async fn check_enroll_secret(&self, presented: &str) -> Result<()> {
        let expected = self.enroll_secret_digest().await?;
        let given: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        if presented.is_empty() || given != expected {
            return Err(node_invalid("enrollment refused"));
        }
        Ok(())
    }

    /// The SHA-256 of the enroll secret's content (trimmed, as osqueryd trims the file).
    async fn enroll_secret_digest(&self) -> Result<[u8; 32]> {
        let not_set_up = || {
            ServiceError::refused(
                ErrorCode::OsqueryNotSetUp,
                ErrorCode::OsqueryNotSetUp.meaning(),
            )
        };
        let plaintext = self
            .read_secret(ENROLL_SECRET_NAME)
            .await?
            .ok_or_else(not_set_up)?;
        let text = String::from_utf8_lossy(&plaintext);
        if text.trim().is_empty() {
            return Err(not_set_up());
        }
        Ok(Sha256::digest(text.trim().as_bytes()).into())
    }

    /// Links a node to the yeet host whose agent reports the node's hardware UUID or, failing
    /// that and when `by_name`, whose name is the node's hostname or identifier, when that
    /// host has no node yet.
    async fn link_node(&self, node: &NodeRow, by_name: bool) -> Result<()> {
        if node.host_id.is_some() {
            return Ok(());
        }
        if !node.hardware_uuid.is_empty()
            && let Some(host) = self
                .store
                .host_by_hardware_uuid(&node.hardware_uuid)
                .await?
        {
            return self.link_to(node, host.id, &host.name).await;
        }
        if !by_name {
            return Ok(());
        }
        let short = |n: &str| n.split('.').next().unwrap_or(n).to_owned();
        let mut candidates = vec![node.host_identifier.clone(), short(&node.host_identifier)];
        if !node.hostname.is_empty() {
            candidates.push(node.hostname.clone());
            candidates.push(short(&node.hostname));
        }
        for name in candidates {
            if let Some(host) = self.store.host_by_name(&name).await? {
                return self.link_to(node, host.id, &host.name).await;
            }
        }
        Ok(())
    }

    async fn link_to(&self, node: &NodeRow, host_id: i64, host: &str) -> Result<()> {
        if self.store.link_node(node.id, host_id).await? {
            tracing::info!(node = %node.host_identifier, host, "osquery node linked to its host");
        } else {
            tracing::warn!(node = %node.host_identifier, host, "another osquery node is linked to this host; this one stays unlinked");
        }
        Ok(())
    }

    /// The configuration a node is served: the options, and the scheduled queries meant for
    /// it (every node, or its host's name or its identifier), grouped into their packs.
    pub async fn osquery_config(&self, node: &Node) -> Result<Config> {
        let names = self.node_names(node).await?;
        let mut config = Config::default();
        for option in self.store.list_osquery_options().await? {
            let value = serde_json::from_str(&option.value)
                .unwrap_or(serde_json::Value::String(option.value));
            config.options.insert(option.name, value);
        }
        for row in self.store.list_scheduled_queries().await? {
            let hosts: Vec<String> = serde_json::from_str(&row.hosts).unwrap_or_default();
            if !hosts.is_empty() && !hosts.iter().any(|h| names.contains(h)) {
                continue;
            }
            let query = admin::scheduled_query_wire(&row);
            if row.pack.is_empty() {
                config.schedule.insert(row.name, query);
            } else {
                let pack = config.packs.entry(row.pack).or_default();
                pack.queries.insert(row.name, query);
            }
        }
        Ok(config)
    }

    /// The names a node answers to in `--host` filters: its identifier and, when linked,
    /// its host's name.
    async fn node_names(&self, node: &Node) -> Result<Vec<String>> {
        let mut names = vec![node.host_identifier.clone()];
        let row = self.store.node_by_id(node.id).await?;
        if let Some(host_id) = row.and_then(|r| r.host_id)
            && let Some(host) = self.store.host_by_id(host_id).await?
        {
            names.push(host.name);
        }
        Ok(names)
    }

    /// Writes batched node last-seen times.
    pub async fn flush_node_last_seen(&self) -> Result<(), StoreError> {
        let batch: Vec<(i64, i64)> = lock(&self.osquery.seen).drain().collect();
        if batch.is_empty() {
            return Ok(());
        }
        self.store.touch_nodes(&batch).await
    }

    /// Drops log lines older than the retention period.
    pub async fn expire_osquery_logs(&self) -> Result<u64, StoreError> {
        let keep = (self.osquery.settings.log_retention_days as i64).saturating_mul(86_400);
        self.store.delete_log_lines_before(now() - keep).await
    }

    /// Notes a campaign deadline (ours or another replica's), so that reads look for work.
    pub(crate) fn note_campaign_deadline(&self, deadline: i64) {
        self.osquery
            .campaign_deadline
            .fetch_max(deadline, Ordering::Relaxed);
    }
}
