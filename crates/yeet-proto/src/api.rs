//! JSON wire types of the agent API (`/v1/agent/...`) and the admin API (everything else
//! under `/v1`). Paths are constants here so that server and clients cannot disagree.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::ErrorCode;

pub mod paths {
    pub const REGISTER: &str = "/v1/agent/register";
    pub const CHECKIN: &str = "/v1/agent/checkin";
    pub const REPORT: &str = "/v1/agent/report";
    pub const WHOAMI: &str = "/v1/whoami";
    pub const REGISTRATIONS: &str = "/v1/registrations";
    pub const APPROVE: &str = "/v1/registrations/approve";
    pub const REJECT: &str = "/v1/registrations/reject";
    pub const HOSTS: &str = "/v1/hosts";
    pub const RELEASES: &str = "/v1/releases";
    pub const ROLLBACK: &str = "/v1/releases/rollback";
    pub const RETRY: &str = "/v1/releases/retry";
    pub const CACHE_GC: &str = "/v1/cache/gc";
    pub const CACHE_MISSING: &str = "/v1/cache/missing";
    pub const SECRETS: &str = "/v1/secrets";
    /// Not under `/v1/secrets/`, where it would shadow a secret of that name.
    pub const SECRETS_RECIPIENT: &str = "/v1/secrets-recipient";
    pub const AGENT_SECRETS: &str = "/v1/agent/secrets";
    pub const AGENT_DETACH: &str = "/v1/agent/detach";
    pub const AGENT_ATTACH: &str = "/v1/agent/attach";
    pub const USERS: &str = "/v1/users";
    /// The audit log (`yeet audit`).
    pub const AUDIT: &str = "/v1/audit";
    pub const ROLLOUT_POLICIES: &str = "/v1/rollout-policies";
    pub const ROLLOUTS: &str = "/v1/rollouts";
    pub const WINDOWS: &str = "/v1/windows";

    /// `/v1/windows/{name}`
    pub fn window(name: &str) -> String {
        format!("{WINDOWS}/{name}")
    }

    /// `/v1/rollout-policies/{name}`
    pub fn rollout_policy(name: &str) -> String {
        format!("{ROLLOUT_POLICIES}/{name}")
    }

    /// `/v1/rollouts/{id}`
    pub fn rollout(id: &str) -> String {
        format!("{ROLLOUTS}/{id}")
    }

    /// `/v1/rollouts/{id}/{action}`: pause, resume, abort, promote.
    pub fn rollout_control(id: &str, action: &str) -> String {
        format!("{ROLLOUTS}/{id}/{action}")
    }

    /// `/v1/users/{name}`
    pub fn user(name: &str) -> String {
        format!("{USERS}/{name}")
    }

    /// `/v1/users/{name}/role`
    pub fn user_role(name: &str) -> String {
        format!("{USERS}/{name}/role")
    }

    /// `/v1/users/{name}/tags`: the user's scope.
    pub fn user_tags(name: &str) -> String {
        format!("{USERS}/{name}/tags")
    }

    /// `/v1/users/{name}/keys`: add a key.
    pub fn user_keys(name: &str) -> String {
        format!("{USERS}/{name}/keys")
    }

    /// `/v1/users/{name}/keys/remove`: remove a key (key ids hold `/`, so they go in the
    /// body, not the path).
    pub fn user_keys_remove(name: &str) -> String {
        format!("{USERS}/{name}/keys/remove")
    }

    /// `/v1/secrets/{name}`
    pub fn secret(name: &str) -> String {
        format!("{SECRETS}/{name}")
    }

    /// `/v1/secrets/{name}/rotate`
    pub fn secret_rotate(name: &str) -> String {
        format!("{SECRETS}/{name}/rotate")
    }

    /// `/v1/secrets/{name}/grant`
    pub fn secret_grant(name: &str) -> String {
        format!("{SECRETS}/{name}/grant")
    }

    /// `/v1/secrets/{name}/revoke`
    pub fn secret_revoke(name: &str) -> String {
        format!("{SECRETS}/{name}/revoke")
    }

    /// `/v1/releases/{id}`
    pub fn release(id: &str) -> String {
        format!("{RELEASES}/{id}")
    }

    /// `/v1/hosts/{name}`
    pub fn host(name: &str) -> String {
        format!("{HOSTS}/{name}")
    }

    /// `/v1/hosts/{name}/rename`
    pub fn host_rename(name: &str) -> String {
        format!("{HOSTS}/{name}/rename")
    }

    /// `/v1/hosts/{name}/policy`: what the host may do on its own (detach).
    pub fn host_policy(name: &str) -> String {
        format!("{HOSTS}/{name}/policy")
    }

    /// `/v1/hosts/{name}/tags`: add and remove the host's tags.
    pub fn host_tags(name: &str) -> String {
        format!("{HOSTS}/{name}/tags")
    }

    /// `/v1/hosts/{name}/attach`: end the host's detachment from the operator's side.
    pub fn host_attach(name: &str) -> String {
        format!("{HOSTS}/{name}/attach")
    }

    /// `/v1/hosts/{name}/activations`: past activation attempts, newest first.
    pub fn host_activations(name: &str) -> String {
        format!("{HOSTS}/{name}/activations")
    }

    /// `/v1/hosts/{name}/log`: the latest activation with its log.
    pub fn host_log(name: &str) -> String {
        format!("{HOSTS}/{name}/log")
    }

    /// A value as one path segment or query value: everything but RFC 3986's unreserved
    /// characters is percent-encoded, so a name carrying `?`, `#`, `/` or `%` names itself
    /// and no other resource. Path builders above take segments encoded by this (the server
    /// passes route templates such as `{name}` instead).
    pub fn segment(value: &str) -> String {
        let mut out = String::with_capacity(value.len());
        for b in value.bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                out.push(char::from(b));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    /// `path?key=value&...` for the fields that are set; values are percent-encoded.
    pub fn with_query(path: &str, pairs: &[(&str, Option<String>)]) -> String {
        let mut out = path.to_owned();
        for (key, value) in pairs.iter().filter_map(|(k, v)| Some((k, v.as_ref()?))) {
            out.push(if out.contains('?') { '&' } else { '?' });
            out.push_str(key);
            out.push('=');
            out.push_str(&segment(value));
        }
        out
    }

    /// `GET /v1/releases` with its filter.
    pub fn releases(filter: &super::ReleaseFilter) -> String {
        with_query(
            RELEASES,
            &[
                ("host", filter.host.clone()),
                ("limit", filter.limit.map(|l| l.to_string())),
            ],
        )
    }

    /// `GET /v1/rollouts` with its limit.
    pub fn rollouts(limit: &super::Limit) -> String {
        with_query(ROLLOUTS, &[("limit", limit.limit.map(|l| l.to_string()))])
    }

    /// `GET /v1/hosts/{name}/activations` with its limit (`name` is encoded here).
    pub fn activations(name: &str, limit: &super::Limit) -> String {
        with_query(
            &host_activations(&segment(name)),
            &[("limit", limit.limit.map(|l| l.to_string()))],
        )
    }
}

/// Which releases `GET /v1/releases` lists, as its query string.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReleaseFilter {
    /// Only releases that name this host.
    pub host: Option<String>,
    /// At most this many, newest first.
    pub limit: Option<i64>,
}

/// `GET /v1/hosts` as a watch (its query string): with `wait`, and the `ETag` of the
/// listing the client has in `If-None-Match`, the server holds the request until the
/// listing differs from that one (last-seen times aside) or `wait` seconds pass (at most
/// `MAX_WATCH_SECS`), then answers the new listing, or `304 Not Modified`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostsWatch {
    pub wait: Option<u64>,
}

/// The longest the server holds a watch of the hosts' listing.
pub const MAX_WATCH_SECS: u64 = 25;

/// How many entries a history listing (`GET /v1/hosts/{name}/activations`) returns.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limit {
    pub limit: Option<i64>,
}

/// What every error response body looks like: `{"error":{"code":"...","message":"..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `code` stays text on the wire so that a client can show a newer server's codes
/// (`yeet_client::ClientError::api_code` reads it as an `ErrorCode`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.as_str().to_owned(),
                message: message.into(),
            },
        }
    }
}

/// Facts a host reports about itself when it registers and checks in.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Facts {
    pub os: String,
    pub arch: String,
    pub agent_version: String,
    /// The machine's hardware (DMI) UUID, when it has one: what osquery reports as
    /// `system_info.uuid`, so that osquery nodes link to their hosts by it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hardware_uuid: String,
    /// A digest of the binary-cache keys the host trusts (its agent config's and its
    /// nix.conf's): when it changes, a system the host refused as untrusted is offered
    /// again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trust_digest: String,
    /// The OS release: the running system's NixOS or nix-darwin version, else the
    /// distribution's `PRETTY_NAME`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub os_version: String,
    /// The running kernel's release (`uname -r`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel: String,
    /// When the machine booted (Unix seconds); its uptime is the time since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booted_at: Option<i64>,
    /// Tags the host's own config suggests. Only suggestions: a host never chooses its
    /// tags, because tags decide who may act on it; an operator accepts them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suggested_tags: Vec<String>,
}

/// Sent by an agent, signed by the key it registers: proof that it holds the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RegisterRequest {
    /// OpenSSH public key line of the signing key.
    pub public_key: String,
    pub hostname_hint: String,
    pub facts: Facts,
    /// Long-poll while pending: the server may hold the request this many seconds (capped
    /// by the server, and never past the code's expiry) and answers `approved` as soon as
    /// an admin approves. A registration whose code is new is answered at once, so that
    /// the host can show the code. Servers from before this field answer at once.
    #[serde(default)]
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum RegisterResponse {
    /// Waiting for an admin: show `code` to the person at the host.
    Pending { code: String, expires_at: i64 },
    /// The key belongs to an approved host.
    Approved { host: String },
}

/// What the agent says it is doing, as it reports it on check-in.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AgentState {
    #[default]
    Standby,
    Updating,
    RolledBack,
    RebootRequired,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct CheckinRequest {
    pub current_system: Option<String>,
    pub booted_system: Option<String>,
    #[serde(default)]
    pub state: AgentState,
    pub facts: Facts,
    /// Long-poll: when there is nothing to do, the server may hold the request this many
    /// seconds (capped by the server) and answers as soon as the desired system changes.
    #[serde(default)]
    pub wait_secs: u64,
    /// The digest of the secret versions the host holds (`secrets::versions_digest`, as the
    /// server last answered it), when its system asks for secrets: a held check-in answers
    /// at once when the host's granted versions differ from it.
    #[serde(default)]
    pub secrets_digest: Option<String>,
    /// Whether the host believes it is detached: a held check-in answers at once when the
    /// server's record says otherwise.
    #[serde(default)]
    pub detached: bool,
    /// How many systemd units have failed (`systemctl --failed`); `None` where the host
    /// runs no systemd. A rollout's `failed-units=0` health gate reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_units: Option<u32>,
    /// The reboot policy the host's own configuration declares, if it declares one; it
    /// overrides the policy set on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot_policy: Option<RebootPolicy>,
}

/// How an activation attempt ended.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ActivationResult {
    /// Switched, and the restarted agent reached the server and passed the health check.
    Confirmed,
    /// Failed before anything changed (fetch failed, secrets missing, ...).
    Failed,
    /// Switched, then went back to the previous system.
    RolledBack,
    /// The closure was not signed by a key the host trusts; nothing was activated.
    Untrusted,
}

/// Sent by the agent when an activation attempt has ended.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActivationReport {
    pub store_path: String,
    pub release_id: Option<i64>,
    pub result: ActivationResult,
    pub reason: String,
    pub started_at: i64,
    pub finished_at: i64,
    /// The new system changes the kernel or initrd: it is fully active only after a reboot.
    #[serde(default)]
    pub reboot_required: bool,
    /// The activation log, gzip-compressed and base64-encoded; the agent caps its size.
    #[serde(default)]
    pub log_gzip_base64: String,
}

/// One past activation attempt, as the server keeps it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Activation {
    pub id: i64,
    pub host: String,
    pub store_path: String,
    pub release_id: Option<i64>,
    pub result: ActivationResult,
    pub reason: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub reboot_required: bool,
}

/// An activation with its (decompressed) log.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ActivationLog {
    pub activation: Activation,
    pub log: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Action {
    /// Keep running what you run.
    None,
    /// Switch to this system, fetching it from these binary caches (substituter URLs).
    Switch {
        store_path: String,
        release_id: i64,
        #[serde(default)]
        caches: Vec<String>,
        /// Also fetch from the server's embedded cache, `<server URL>/cache`.
        #[serde(default)]
        embedded_cache: bool,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckinResponse {
    pub host: String,
    pub action: Action,
    /// When to check in next.
    pub next_checkin_secs: u64,
    /// The digest of the secret versions granted to the host now; when it differs from
    /// what the host holds, the host fetches its secrets again.
    #[serde(default)]
    pub secrets_digest: String,
    /// The host is detached: it runs a locally chosen system, and `action` stays `none`
    /// until it attaches again (or an operator ends the detachment).
    #[serde(default)]
    pub detached: Option<Detachment>,
    /// What the newest release naming the host says it should run, whether or not this
    /// answer asks for it (for the host's local status).
    #[serde(default)]
    pub desired_system: Option<String>,
    /// Reboot now: the host reported `reboot-required`, its reboot policy is `in-window`,
    /// and it is inside its maintenance window (or none covers it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<RebootOrder>,
}

/// A host's request to run a locally chosen system for a while (`POST /v1/agent/detach`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct DetachRequest {
    /// Why, in the words of the person at the machine.
    #[serde(default)]
    pub reason: String,
    /// Who asked, as the host knows them (a local user name and uid).
    #[serde(default)]
    pub user: String,
}

/// A host's detachment, as the server records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Detachment {
    /// When the server permitted it.
    pub since: i64,
    /// Who asked on the host, and why.
    pub user: String,
    pub reason: String,
}

/// What a host may do on its own, set by admins (`PUT /v1/hosts/{name}/policy`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct HostPolicy {
    /// People at the machine may detach it and run a locally chosen system.
    #[serde(default)]
    pub allow_detach: bool,
    /// Whether the host reboots by itself when its activation needs a reboot, as set here.
    #[serde(default)]
    pub reboot: RebootPolicy,
    /// The reboot policy the host's own agent declares (its `reboot` setting); when set,
    /// it is the one that holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub declared_reboot: Option<RebootPolicy>,
}

impl HostPolicy {
    /// The reboot policy that holds: the host's own declaration, else the server's.
    pub fn effective_reboot(&self) -> RebootPolicy {
        self.declared_reboot.unwrap_or(self.reboot)
    }
}

/// A change to a host's policy: the fields given are set, the others kept
/// (`PUT /v1/hosts/{name}/policy`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct HostPolicyChange {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_detach: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reboot: Option<RebootPolicy>,
}

/// Whether a host whose activation ends `reboot-required` (a `boot`-mode activation, or a
/// new kernel) reboots by itself.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum RebootPolicy {
    /// Never: people reboot it.
    #[default]
    Never,
    /// Inside the host's maintenance window (at once, where no window covers the host).
    InWindow,
}

/// The server's word to a host that needs a reboot and may take one now.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RebootOrder {
    /// Why now, in words (for the host's log and its report).
    pub reason: String,
    /// The release that names the host's desired system, when it is the system the
    /// reboot is for: the report after the boot counts for it.
    #[serde(default)]
    pub release_id: Option<i64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Viewer,
    Publisher,
    Admin,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WhoAmI {
    pub name: String,
    pub role: Role,
    pub key_id: String,
    /// The user's scope: hosts carrying any of these tags. Empty: the whole fleet.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// An operator, as admins see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub role: Role,
    /// The user's scope; empty: the whole fleet.
    pub tags: Vec<String>,
    pub keys: Vec<UserKey>,
    pub created_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserKey {
    /// The OpenSSH fingerprint (`SHA256:...`).
    pub key_id: String,
    pub public_key: String,
    pub added_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddUserRequest {
    pub name: String,
    /// An OpenSSH ed25519 public key line.
    pub public_key: String,
    pub role: Role,
    /// Scope the user to hosts carrying any of these tags; empty: the whole fleet.
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetRoleRequest {
    pub role: Role,
}

/// A user's new scope, replacing the old; empty: the whole fleet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SetTagsRequest {
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddKeyRequest {
    pub public_key: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RemoveKeyRequest {
    pub key_id: String,
}

/// A registration waiting for approval. Deliberately carries no code: the code proves that
/// the admin has seen the host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PendingRegistration {
    pub key_id: String,
    pub hostname_hint: String,
    pub facts: Facts,
    pub first_seen: i64,
    pub last_seen: i64,
    pub code_expired: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApproveRequest {
    pub code: String,
    pub name: String,
    /// Tags the host starts with (see `names::validate_tag`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Changes to a host's tags: `add` first, then `remove`; a tag in both ends up removed.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TagHostRequest {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub remove: Vec<String>,
    /// Add the tags the host's agent suggests (before `remove`).
    #[serde(default)]
    pub accept_suggested: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RejectRequest {
    pub key_id: String,
}

/// How the server sees a host right now.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum HostState {
    /// Approved, never checked in.
    New,
    Standby,
    Updating,
    /// The newest attempt at the desired system switched, then went back.
    RolledBack,
    /// The newest attempt at the desired system failed before anything changed (the fetch,
    /// the secrets).
    Failed,
    /// The host refused the desired system: not signed by a key it trusts. Nothing switched.
    Untrusted,
    RebootRequired,
    /// Not seen for longer than the offline threshold.
    Offline,
    /// Running a locally chosen system with the server's permission.
    Detached,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HostInfo {
    pub name: String,
    pub key_id: String,
    pub state: HostState,
    /// What the host runs, as it last reported.
    pub current_system: Option<String>,
    /// What the newest release naming the host says it should run, and that release.
    pub desired_system: Option<String>,
    pub desired_release: Option<i64>,
    pub last_seen: Option<i64>,
    pub approved_at: i64,
    /// Set by operators only, sorted: they decide who may act on the host.
    #[serde(default)]
    pub tags: Vec<String>,
    pub facts: Facts,
    /// How the host's newest activation attempt ended.
    #[serde(default)]
    pub last_result: Option<ActivationResult>,
    /// The system that attempt was for (cleared by `yeet retry`).
    #[serde(default)]
    pub last_result_system: Option<String>,
    /// What the host may do on its own.
    #[serde(default)]
    pub policy: HostPolicy,
    /// The host's detachment, while it lasts.
    #[serde(default)]
    pub detached: Option<Detachment>,
    /// The host's switch to its desired system waits for this maintenance window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_wait: Option<crate::windows::WindowWait>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RenameRequest {
    pub new_name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreateReleaseRequest {
    /// Host name → store path.
    pub hosts: BTreeMap<String, String>,
    #[serde(default)]
    pub message: String,
    /// The cache the closures were pushed to; `None` is the server's embedded cache. The
    /// server checks each top-level narinfo there before creating the release.
    #[serde(default)]
    pub cache: Option<String>,
    /// The source revision the systems were built from (a flake's git revision).
    #[serde(default)]
    pub revision: Option<String>,
    /// The source tree had uncommitted changes.
    #[serde(default)]
    pub dirty: bool,
    /// Apply the release in waves, by this rollout policy (`yeet rollout policy set`);
    /// `None`: the server's default policy, if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<String>,
    /// Reach every host at once, whatever the default policy (an emergency fix).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub now: bool,
}

/// Points hosts back at their previous systems: either the named hosts (before their newest
/// release) or every host of `release` (before that release).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RollbackRequest {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub release: Option<i64>,
}

/// `POST /v1/releases/retry`: offer these hosts their desired system once more, although
/// they tried it already (after the cause of a failure was fixed by hand).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetryRequest {
    pub hosts: Vec<String>,
}

/// The hosts that will be offered their desired system at their next check-in.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RetryResponse {
    pub retried: Vec<String>,
}

/// Garbage-collects the embedded cache.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheGcRequest {
    /// Keep the closures of each host's newest `keep` releases.
    pub keep: u32,
    /// Never delete files younger than this (uploads for a release still being published).
    #[serde(default = "default_gc_grace")]
    pub grace_secs: u64,
}

fn default_gc_grace() -> u64 {
    3600
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheGcReport {
    pub kept_paths: u64,
    pub deleted_paths: u64,
    pub deleted_files: u64,
    pub bytes_freed: u64,
}

/// The most store paths one [`CacheMissingRequest`] may ask about: about 700 KB of JSON,
/// under the server's default 1 MiB body limit. Larger closures ask in chunks.
pub const MAX_CACHE_QUERY_PATHS: usize = 20_000;

/// Which of these store paths the embedded cache lacks: one request for a whole closure,
/// where a narinfo `GET` per path would cost a round trip each.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheMissingRequest {
    /// Store path hash parts (the 32 characters after `/nix/store/`).
    pub hashes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CacheMissingResponse {
    /// The requested hashes that have no narinfo, in request order.
    pub missing: Vec<String>,
    /// The public keys (`name:base64`) the server requires on every narinfo it accepts,
    /// so a publisher can check its signatures before uploading anything. Empty: the
    /// server checks none.
    pub trusted_keys: Vec<String>,
}

/// An immutable release: a set of host → store path with its provenance.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Release {
    pub id: i64,
    pub author: String,
    pub created_at: i64,
    pub message: String,
    #[serde(default)]
    pub revision: Option<String>,
    #[serde(default)]
    pub dirty: bool,
    pub hosts: BTreeMap<String, String>,
}

wire_names!(AgentState, "agent state" { Standby => "standby", Updating => "updating", RolledBack => "rolled-back", RebootRequired => "reboot-required" });
wire_names!(ActivationResult, "activation result" { Confirmed => "confirmed", Failed => "failed", RolledBack => "rolled-back", Untrusted => "untrusted" });
wire_names!(RebootPolicy, "reboot policy" { Never => "never", InWindow => "in-window" });
wire_names!(Role, "role" { Viewer => "viewer", Publisher => "publisher", Admin => "admin" });
wire_names!(HostState, "host state" {
    New => "new", Standby => "standby", Updating => "updating", RolledBack => "rolled-back", Failed => "failed", Untrusted => "untrusted", RebootRequired => "reboot-required", Offline => "offline", Detached => "detached",
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde_and_roundtrip() {
        for r in [
            ActivationResult::Confirmed,
            ActivationResult::Failed,
            ActivationResult::RolledBack,
            ActivationResult::Untrusted,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
            assert_eq!(r.as_str().parse::<ActivationResult>().unwrap(), r);
        }
        for r in [Role::Viewer, Role::Publisher, Role::Admin] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        for st in [
            AgentState::Standby,
            AgentState::Updating,
            AgentState::RolledBack,
            AgentState::RebootRequired,
        ] {
            assert_eq!(serde_json::to_value(st).unwrap(), st.as_str());
            assert_eq!(st.as_str().parse::<AgentState>().unwrap(), st);
        }
        assert_eq!(
            serde_json::to_value(HostState::RebootRequired).unwrap(),
            HostState::RebootRequired.as_str()
        );
        let err = "root".parse::<Role>().unwrap_err();
        assert!(err.contains("viewer, publisher, admin"), "{err}");
    }

    #[test]
    fn query_strings_carry_only_set_fields_encoded() {
        assert_eq!(paths::releases(&ReleaseFilter::default()), "/v1/releases");
        let filter = ReleaseFilter {
            host: Some("a b&c".into()),
            limit: Some(5),
        };
        assert_eq!(
            paths::releases(&filter),
            "/v1/releases?host=a%20b%26c&limit=5"
        );
        assert_eq!(
            paths::activations("web-1", &Limit { limit: Some(3) }),
            "/v1/hosts/web-1/activations?limit=3"
        );
        assert_eq!(
            paths::host(&paths::segment("../web-1?x#y%")),
            "/v1/hosts/..%2Fweb-1%3Fx%23y%25"
        );
    }

    #[test]
    fn tagged_enums_have_stable_json() {
        let a = Action::Switch {
            store_path: "/nix/store/x".into(),
            release_id: 3,
            caches: vec![],
            embedded_cache: false,
        };
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"type":"switch","store_path":"/nix/store/x","release_id":3,"caches":[],"embedded_cache":false}"#
        );
        assert_eq!(
            serde_json::to_string(&Action::None).unwrap(),
            r#"{"type":"none"}"#
        );
        let r = RegisterResponse::Pending {
            code: "ABCD-EFGH".into(),
            expires_at: 5,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"status":"pending","code":"ABCD-EFGH","expires_at":5}"#
        );
        assert_eq!(
            serde_json::to_string(&HostState::RolledBack).unwrap(),
            r#""rolled-back""#
        );
    }
}
