//! The agent's local interface: varlink (`org.yeet.Agent`) on `/run/yeet/agent.varlink`,
//! root:yeet 0660. People at the machine see what yeet does and trigger it; where the
//! server's policy allows, they run a locally chosen system for a while (detach), and in an
//! emergency they switch without the server at all (force).
//!
//! Who may do what is decided here, from the peer's credentials (`SO_PEERCRED`, taken when
//! the connection is accepted) and the groups the system's group database gives that user,
//! not only by the socket's mode: reading needs the socket group, changing the system needs
//! root, the admin group, or a polkit authorization. Each connection is
//! served by a task of its own, and no message may exceed `MAX_MESSAGE` bytes, so that one
//! stalled or hostile local client cannot hold up the others, nor the agent's own work,
//! which runs on another thread.

use futures_util::Stream;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use yeet_client::{Client, ClientError};
use yeet_proto::ErrorCode;
use yeet_proto::api::{ActivationResult, DetachRequest};
use zlink::connection::socket::{self, ReadResult};
use zlink::{Connection, Reply, introspect, service};

use crate::config::{BOOTED_SYSTEM, CURRENT_SYSTEM, Config};
use crate::daemon::Shared;
use crate::launch::{LaunchError, Launcher};
use crate::state::{ActivationState, Origin, Phase};
use crate::system::system_link;

/// Where the agent serves its local interface.
pub const SOCKET: &str = "/run/yeet/agent.varlink";
pub const INTERFACE: &str = "org.yeet.Agent";
/// The largest message a client may send; status calls are tiny, and a path is short.
const MAX_MESSAGE: usize = 64 * 1024;
/// The most clients served at once (more wait in the kernel's backlog), and the most
/// connections one user may hold (more are closed at once), so that one user's idle
/// connections cannot lock the others out.
const MAX_CLIENTS: usize = 256;
const MAX_CLIENTS_PER_USER: usize = 16;
/// How long a connection may stay silent while the agent waits for its next call (or for
/// the rest of one); a switch's progress is unaffected, since the agent writes then.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one reply may wait for the client to read it. A client that sends calls and
/// never reads the replies fills the socket's buffer; without this, the agent's write (and
/// the connection, with its buffers) would wait for good.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The least time between two check-ins that callers ask for.
const CHECK_NOW_SPACING: Duration = Duration::from_secs(1);
/// The largest log `GetLog` returns, and the most log one progress reply carries.
const MAX_LOG: usize = 256 * 1024;
const MAX_PROGRESS_LOG: usize = 64 * 1024;
/// How often a running switch's progress is looked at.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);
/// How long a finished switch's outcome waits for its report to reach the server, so that
/// the next call is not refused as busy (a host cut off from its server answers anyway).
const REPORT_GRACE: Duration = Duration::from_secs(5);

/// A detachment, as the server granted it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, introspect::CustomType)]
#[serde(rename_all = "camelCase")]
#[zlink(rename_all = "camelCase")]
pub struct LocalDetachment {
    /// Unix time the server permitted it.
    pub since: i64,
    /// Who asked, and why.
    pub user: String,
    pub reason: String,
}

/// The activation in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, introspect::CustomType)]
#[serde(rename_all = "camelCase")]
#[zlink(rename_all = "camelCase")]
pub struct ActivationInfo {
    pub store_path: String,
    /// "release", "detached switch" or "forced switch".
    pub origin: String,
    /// pending, fetching, switching, switched (waiting for confirmation) or done.
    pub phase: String,
    pub requested_by: Option<String>,
    pub started_at: i64,
    /// Once done (and until reported): how it ended, and why.
    pub result: Option<String>,
    pub reason: Option<String>,
}

/// How the latest reported activation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, introspect::CustomType)]
#[serde(rename_all = "camelCase")]
#[zlink(rename_all = "camelCase")]
pub struct LastResult {
    pub store_path: String,
    pub origin: String,
    /// confirmed, failed, rolled-back or untrusted.
    pub result: String,
    pub reason: String,
    pub finished_at: i64,
}

/// What the agent is doing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, introspect::CustomType)]
#[serde(rename_all = "camelCase")]
#[zlink(rename_all = "camelCase")]
pub struct Status {
    /// The server's URL.
    pub server: String,
    /// The fingerprint of the key the agent signs with.
    pub key_id: String,
    /// registering, pending-approval or approved.
    pub enrollment: String,
    /// The fleet's name for this host, once approved.
    pub host: Option<String>,
    /// While pending: the code to give an admin (`yeet approve NAME CODE`), and its expiry.
    pub verification_code: Option<String>,
    pub code_expires_at: Option<i64>,
    /// What runs, what was booted, and what the server's newest release says should run.
    pub current_system: Option<String>,
    pub booted_system: Option<String>,
    pub desired_system: Option<String>,
    /// attached, detached (the server permits a local system) or forced (switched without
    /// the server; undone once it is reached, unless detached by then).
    pub attachment: String,
    pub detached: Option<LocalDetachment>,
    /// registering, standby, updating, rolled-back or reboot-required.
    pub state: String,
    pub activation: Option<ActivationInfo>,
    pub last_result: Option<LastResult>,
    /// Unix time of the last answer from the server.
    pub last_checkin: Option<i64>,
    /// Why the last round failed, if it did.
    pub last_error: Option<String>,
}

/// `GetStatus`'s reply.
#[derive(Debug, Clone, Serialize, Deserialize, introspect::Type)]
pub struct StatusReply {
    pub status: Status,
}

/// `GetLog`'s reply.
#[derive(Debug, Clone, Serialize, Deserialize, introspect::Type)]
pub struct LogReply {
    /// The end of the log of the activation in progress, else of the latest one.
    pub log: String,
}

/// `Detach`'s reply.
#[derive(Debug, Clone, Serialize, Deserialize, introspect::Type)]
pub struct DetachReply {
    pub detachment: LocalDetachment,
}

/// One step of a running switch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, introspect::CustomType)]
#[serde(rename_all = "camelCase")]
#[zlink(rename_all = "camelCase")]
pub struct Progress {
    pub store_path: String,
    /// pending, fetching, switching, switched (waiting for confirmation) or done.
    pub phase: String,
    /// Log lines written since the previous reply.
    pub log: String,
    /// Set on the last reply: confirmed.
    pub result: Option<String>,
}

/// Every error of the interface.
#[derive(Debug, Clone, PartialEq, Eq, zlink::ReplyError, introspect::ReplyError)]
#[zlink(interface = "org.yeet.Agent")]
pub enum AgentError {
    /// The caller may not do this. Reading needs membership in the socket group (`yeet`);
    /// changing the system needs root, the admin group (`yeet-admin`) or polkit's consent.
    PermissionDenied { reason: String },
    /// An activation is running, or its report has not reached the server yet: two never
    /// run at once.
    Busy { activation: String },
    /// Switch and Attach need a detached host: call Detach first (or ForceSwitch).
    NotDetached { reason: String },
    /// The server's policy for this host does not allow detaching.
    DetachRefused { reason: String },
    /// The system is not signed by a key this host trusts; nothing was activated.
    Untrusted { reason: String },
    /// The server could not be reached; ForceSwitch works without it.
    ServerUnreachable { reason: String },
    /// The server refused the request for another reason (the host is not approved yet...).
    ServerRefused { reason: String },
    /// The argument is not a store path (`/nix/store/<hash>-<name>`).
    InvalidStorePath { reason: String },
    /// The switch ran and did not hold: it failed, or the new system was rolled back.
    SwitchFailed { result: String, reason: String },
    /// The agent itself failed (its state directory cannot be written...).
    AgentFailed { reason: String },
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentError::PermissionDenied { reason } => write!(f, "permission denied: {reason}"),
            AgentError::Busy { activation } => write!(
                f,
                "busy: {activation}; wait for it (`yeet-agent status`) and try again"
            ),
            AgentError::NotDetached { reason } => write!(f, "not detached: {reason}"),
            AgentError::DetachRefused { reason } => write!(f, "detach refused: {reason}"),
            AgentError::Untrusted { reason } => write!(f, "untrusted: {reason}"),
            AgentError::ServerUnreachable { reason } => write!(
                f,
                "the server is unreachable: {reason}; `yeet-agent switch --force PATH` works without it"
            ),
            AgentError::ServerRefused { reason } => write!(f, "the server refused: {reason}"),
            AgentError::InvalidStorePath { reason } => write!(f, "invalid store path: {reason}"),
            AgentError::SwitchFailed { result, reason } => {
                write!(f, "the switch ended {result}: {reason}")
            }
            AgentError::AgentFailed { reason } => write!(f, "the agent failed: {reason}"),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<LaunchError> for AgentError {
    fn from(e: LaunchError) -> Self {
        match e {
            LaunchError::Busy(activation) => AgentError::Busy { activation },
            LaunchError::State(e) => AgentError::AgentFailed {
                reason: e.to_string(),
            },
        }
    }
}

fn from_client(e: ClientError) -> AgentError {
    match &e {
        ClientError::Unreachable { .. } => AgentError::ServerUnreachable {
            reason: e.to_string(),
        },
        _ if e.api_code() == Some(ErrorCode::DetachRefused) => AgentError::DetachRefused {
            reason: e.to_string(),
        },
        _ => AgentError::ServerRefused {
            reason: e.to_string(),
        },
    }
}

/// What the agent's main loop and the local interface share.
pub struct Local {
    /// When a caller last made the agent check in: callers get at most one check-in per
    /// `CHECK_NOW_SPACING`, so that a local user cannot make the agent flood the server.
    pub last_check_now: std::sync::Mutex<Option<std::time::Instant>>,
    pub shared: Arc<Shared>,
    pub launcher: Arc<Launcher>,
    pub client: Arc<Client>,
    pub config: Config,
    /// The file of the key the agent signs with (activations sign their own requests).
    pub key_path: PathBuf,
}

/// A system change someone at the machine may ask for, and its polkit action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    Read,
    Change(&'static str),
}

/// Who called, as the kernel vouches for them.
#[derive(Debug, Clone)]
struct Caller {
    uid: u32,
    gid: u32,
    pid: Option<i32>,
}

impl Caller {
    /// The caller's primary group and the groups that list the caller's user as a member.
    fn groups(&self) -> Vec<u32> {
        let mut groups = vec![self.gid];
        let (Some(name), Ok(db)) = (user_name(self.uid), std::fs::read_to_string("/etc/group"))
        else {
            return groups;
        };
        for line in db.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            if let (Some(gid), Some(members)) = (fields.get(2), fields.get(3))
                && members.split(',').any(|m| m == name)
                && let Ok(gid) = gid.parse()
            {
                groups.push(gid);
            }
        }
        groups
    }

    /// "alice (uid 1000)", for the server's record of who detached the host.
    fn describe(&self) -> String {
        match user_name(self.uid) {
            Some(name) => format!("{name} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }
}

/// The id of the group `name`, from `/etc/group`.
pub fn group_id(name: &str) -> Option<u32> {
    std::fs::read_to_string("/etc/group")
        .ok()?
        .lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            (fields.next()? == name).then_some(())?;
            fields.nth(1)?.parse().ok()
        })
}

/// The name of user `uid`, from `/etc/passwd`.
fn user_name(uid: u32) -> Option<String> {
    std::fs::read_to_string("/etc/passwd")
        .ok()?
        .lines()
        .find_map(|l| {
            let fields: Vec<&str> = l.split(':').collect();
            (fields.get(2)?.parse::<u32>().ok()? == uid).then(|| fields[0].to_owned())
        })
}

/// Asks polkit (`pkcheck`, when installed) whether the process may take `action`; false
/// when polkit is absent, says no, or cannot tell.
async fn polkit_allows(action: &'static str, caller: &Caller) -> bool {
    let Some(pid) = caller.pid else {
        return false;
    };
    // pkcheck identifies the process by pid, start time and uid, so that a recycled pid
    // cannot borrow another process's authorization.
    let Some(start) = process_start_time(pid) else {
        return false;
    };
    let subject = format!("{pid},{start},{}", caller.uid);
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("pkcheck")
            .args(["--action-id", action, "--process", &subject])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
    .await
    .unwrap_or(false)
}

/// Field 22 of `/proc/PID/stat`: the process's start time in clock ticks since boot.
fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: count after its end.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(19)?.parse().ok()
}

impl Local {
    /// Decides whether `caller` may do what `need` says.
    async fn authorize(&self, caller: &Caller, need: Need) -> Result<(), AgentError> {
        let groups = caller.groups();
        let member = |name: &str| group_id(name).is_some_and(|g| groups.contains(&g));
        let admin = caller.uid == 0 || member(&self.config.admin_group);
        let allowed = match need {
            Need::Read => admin || member(&self.config.socket_group),
            Need::Change(action) => admin || polkit_allows(action, caller).await,
        };
        if allowed {
            return Ok(());
        }
        let reason = match need {
            Need::Read => format!(
                "{} is not in group {}; an admin can add them (NixOS: users.users.<name>.extraGroups = [ \"{}\" ])",
                caller.describe(),
                self.config.socket_group,
                self.config.socket_group
            ),
            Need::Change(action) => format!(
                "changing the system needs root, membership in group {}, or polkit's consent for {action}; {} has none",
                self.config.admin_group,
                caller.describe()
            ),
        };
        Err(AgentError::PermissionDenied { reason })
    }

    /// The status, with what changes without the main loop's knowledge read fresh.
    pub fn status(&self) -> Status {
        let mut status = self.shared.status();
        status.current_system = system_link(CURRENT_SYSTEM);
        status.booted_system = system_link(BOOTED_SYSTEM);
        let recorded = self.launcher.state().load().ok().flatten();
        status.activation = recorded.as_ref().map(|st| ActivationInfo {
            store_path: st.store_path.clone(),
            origin: st.origin.as_str().to_owned(),
            phase: st.phase.as_str().to_owned(),
            requested_by: st.requested_by.clone(),
            started_at: st.started_at,
            result: st.result.map(|r| r.as_str().to_owned()),
            reason: st.result.map(|_| st.reason.clone()),
        });
        status.last_result = self.launcher.state().last().map(|l| LastResult {
            store_path: l.store_path,
            origin: l.origin.as_str().to_owned(),
            result: l.result.as_str().to_owned(),
            reason: l.reason,
            finished_at: l.finished_at,
        });
        // Forced only while a forced switch is under way or has switched: one that failed or
        // was rolled back left the host as it was.
        let forced = recorded.is_some_and(|st| {
            st.origin == Origin::Forced
                && st
                    .result
                    .is_none_or(|r| r == yeet_proto::api::ActivationResult::Confirmed)
        });
        status.attachment = match (&status.detached, forced) {
            (Some(_), _) => "detached",
            (None, true) => "forced",
            (None, false) => "attached",
        }
        .to_owned();
        status
    }

    /// Records a local switch and starts it.
    fn start_local(
        &self,
        store_path: &str,
        origin: Origin,
        caller: &Caller,
    ) -> Result<ActivationState, AgentError> {
        crate::fetch::check_store_path(store_path)
            .map_err(|reason| AgentError::InvalidStorePath { reason })?;
        // A local switch fetches from nowhere: say so before Nix reports a failed "build".
        if std::fs::symlink_metadata(store_path).is_err() {
            return Err(AgentError::InvalidStorePath {
                reason: format!(
                    "{store_path} is not in this host's store; copy it here first from the machine that has it, e.g. `nix copy --to ssh://root@THIS-HOST {store_path}`"
                ),
            });
        }
        let mut st = crate::daemon::new_activation(&self.config, &self.key_path);
        st.store_path = store_path.to_owned();
        st.origin = origin;
        st.requested_by = Some(caller.describe());
        self.launcher.start(&st)?;
        tracing::info!(store_path, origin = origin.as_str(), by = %caller.describe(), "local switch started");
        // The main loop confirms it: it must not sit in a held check-in meanwhile.
        self.shared.check_now();
        Ok(st)
    }

    /// Runs a blocking server request off the async thread.
    async fn server_call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Client) -> Result<T, ClientError> + Send + 'static,
    ) -> Result<T, AgentError> {
        let client = self.client.clone();
        tokio::task::spawn_blocking(move || f(&client))
            .await
            .map_err(|e| AgentError::AgentFailed {
                reason: e.to_string(),
            })?
            .map_err(from_client)
    }

    /// Busy while an activation is recorded and not finished.
    fn ensure_idle(&self) -> Result<(), AgentError> {
        match self.launcher.state().load() {
            Ok(Some(st)) if st.phase != Phase::Done => Err(AgentError::Busy {
                activation: format!(
                    "{} of {} ({})",
                    st.origin.as_str(),
                    st.store_path,
                    st.phase.as_str()
                ),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(AgentError::AgentFailed {
                reason: e.to_string(),
            }),
        }
    }
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<Reply<Progress>, AgentError>>>>;

fn failed_stream(e: AgentError) -> ProgressStream {
    Box::pin(futures_util::stream::iter([Err(e)]))
}

/// Follows the activation of `store_path` until it ends: a reply per phase change (with
/// the log written meanwhile) when the caller asked for more, then the outcome.
fn follow(local: Arc<Local>, store_path: String, more: bool) -> ProgressStream {
    struct Follow {
        local: Arc<Local>,
        store_path: String,
        more: bool,
        phase: String,
        log_sent: u64,
        done: bool,
        finished_at: Option<std::time::Instant>,
    }
    let start = Follow {
        local,
        store_path,
        more,
        phase: String::new(),
        log_sent: 0,
        done: false,
        finished_at: None,
    };
    Box::pin(futures_util::stream::unfold(start, |mut f| async move {
        if f.done {
            return None;
        }
        loop {
            let state = f.local.launcher.state();
            let recorded = state
                .load()
                .ok()
                .flatten()
                .filter(|st| st.store_path == f.store_path);
            let finished = recorded.as_ref().is_some_and(|st| st.phase == Phase::Done);
            if finished {
                f.finished_at.get_or_insert_with(std::time::Instant::now);
            }
            let reported_or_late = f.finished_at.is_some_and(|t| t.elapsed() >= REPORT_GRACE);
            let outcome = match &recorded {
                Some(st) if finished && reported_or_late => Some((st.result, st.reason.clone())),
                Some(_) => None,
                // Reported and retired already: the latest activation tells how it ended.
                None => Some(
                    match state.last().filter(|l| l.store_path == f.store_path) {
                        Some(l) => (Some(l.result), l.reason),
                        None => (None, "the activation's record is gone".to_owned()),
                    },
                ),
            };
            let fresh_bytes = state.log_since(f.log_sent, MAX_PROGRESS_LOG);
            let fresh = String::from_utf8_lossy(&fresh_bytes).into_owned();
            if let Some((result, reason)) = outcome {
                f.done = true;
                return Some((final_reply(&f.store_path, result, reason, fresh), f));
            }
            let phase = recorded
                .map(|st| st.phase.as_str().to_owned())
                .unwrap_or_default();
            if f.more && (phase != f.phase || !fresh_bytes.is_empty()) {
                f.log_sent += fresh_bytes.len() as u64;
                f.phase = phase.clone();
                let item = Reply::new(Some(Progress {
                    store_path: f.store_path.clone(),
                    phase,
                    log: fresh,
                    result: None,
                }))
                .set_continues(Some(true));
                return Some((Ok(item), f));
            }
            tokio::time::sleep(PROGRESS_EVERY).await;
        }
    }))
}

/// The last reply of a switch: its outcome, as a reply when confirmed, else as its error.
fn final_reply(
    store_path: &str,
    result: Option<ActivationResult>,
    reason: String,
    log: String,
) -> Result<Reply<Progress>, AgentError> {
    match result {
        Some(ActivationResult::Confirmed) => Ok(Reply::new(Some(Progress {
            store_path: store_path.to_owned(),
            phase: Phase::Done.as_str().to_owned(),
            log,
            result: Some("confirmed".into()),
        }))
        .set_continues(Some(false))),
        Some(ActivationResult::Untrusted) => Err(AgentError::Untrusted { reason }),
        other => Err(AgentError::SwitchFailed {
            result: other.map_or("unknown", |r| r.as_str()).to_owned(),
            reason,
        }),
    }
}

/// The `org.yeet.Agent` service, one per connection, with the connection's peer.
pub struct AgentService {
    local: Arc<Local>,
    caller: Caller,
}

impl AgentService {
    async fn authorize(&self, need: Need) -> Result<&Caller, AgentError> {
        self.local.authorize(&self.caller, need).await?;
        Ok(&self.caller)
    }
}

/// The yeet agent on this host: what it runs and does, and (with the rights for it) a
/// locally chosen system. Reading needs the socket group (`yeet`); changing the system needs
/// root, the admin group (`yeet-admin`) or polkit's consent (org.yeet.agent.*).
#[service(
    interface = "org.yeet.Agent",
    vendor = "yeet",
    product = "yeet-agent",
    version = env!("CARGO_PKG_VERSION"),
    // The project has no public home; everything names it by its flake reference (README).
    url = "flake:yeet",
    types = [Status, LocalDetachment, ActivationInfo, LastResult, Progress]
)]
impl AgentService {
    /// The host's enrollment (with the verification code while pending), its systems,
    /// attachment, state, activation and last result, and the last check-in.
    async fn get_status(&self) -> Result<StatusReply, AgentError> {
        self.authorize(Need::Read).await?;
        Ok(StatusReply {
            status: self.local.status(),
        })
    }

    /// The end (256 KiB) of the log of the activation in progress, else of the latest one.
    async fn get_log(&self) -> Result<LogReply, AgentError> {
        self.authorize(Need::Read).await?;
        Ok(LogReply {
            log: self.local.launcher.state().latest_log(MAX_LOG),
        })
    }

    /// Wakes the agent to check in with the server at once, whatever its poll interval (at
    /// most once a second: a check-in a moment ago answers a repeated call too).
    async fn check_now(&self) -> Result<(), AgentError> {
        self.authorize(Need::Read).await?;
        let mut last = crate::launch::lock(&self.local.last_check_now);
        // A check-in a moment ago answers this call as well.
        if last.is_none_or(|t| t.elapsed() >= CHECK_NOW_SPACING) {
            *last = Some(std::time::Instant::now());
            self.local.shared.check_now();
        }
        Ok(())
    }

    /// Asks the server to let this host run a locally chosen system. The server applies the
    /// host's policy (`yeet host policy HOST --allow-detach`) and records who and why.
    async fn detach(&self, reason: String) -> Result<DetachReply, AgentError> {
        let caller = self
            .authorize(Need::Change("org.yeet.agent.detach"))
            .await?;
        self.local.ensure_idle()?;
        let req = DetachRequest {
            reason,
            user: caller.describe(),
        };
        let granted = self.local.server_call(move |c| c.detach(&req)).await?;
        let detachment = LocalDetachment {
            since: granted.since,
            user: granted.user,
            reason: granted.reason,
        };
        self.local.shared.set_detached(Some(detachment.clone()));
        self.local.shared.check_now();
        Ok(DetachReply { detachment })
    }

    /// Switches to a system in this host's store, while detached: fetched and verified with
    /// the host's trusted keys, then confirmed by the health check or rolled back. With the
    /// 'more' flag, a reply per phase, with the log.
    #[zlink(more)]
    async fn switch(
        &self,
        more: bool,
        #[zlink(rename = "storePath")] store_path: String,
    ) -> impl Stream<Item = Result<Reply<Progress>, AgentError>> + Unpin {
        let caller = match self.authorize(Need::Change("org.yeet.agent.switch")).await {
            Ok(c) => c,
            Err(e) => return failed_stream(e),
        };
        if self.local.shared.status().detached.is_none() {
            return failed_stream(AgentError::NotDetached {
                reason: "ask the server first (`yeet-agent detach --reason WHY`), or switch without it (`yeet-agent switch --force PATH`)".into(),
            });
        }
        match self
            .local
            .start_local(&store_path, Origin::Detached, caller)
        {
            Ok(_) => follow(self.local.clone(), store_path, more),
            Err(e) => failed_stream(e),
        }
    }

    /// Switches to a system in this host's store without asking the server (for a host cut
    /// off from it). Confirmed by the health check alone; remembered until the server is
    /// reached again, which brings the host back to its desired system unless it is detached.
    #[zlink(more)]
    async fn force_switch(
        &self,
        more: bool,
        #[zlink(rename = "storePath")] store_path: String,
    ) -> impl Stream<Item = Result<Reply<Progress>, AgentError>> + Unpin {
        let caller = match self
            .authorize(Need::Change("org.yeet.agent.force-switch"))
            .await
        {
            Ok(c) => c,
            Err(e) => return failed_stream(e),
        };
        match self.local.start_local(&store_path, Origin::Forced, caller) {
            Ok(_) => follow(self.local.clone(), store_path, more),
            Err(e) => failed_stream(e),
        }
    }

    /// Ends the detachment: the host returns to the server's newest desired system (not the
    /// one it ran when it detached).
    async fn attach(&self) -> Result<(), AgentError> {
        self.authorize(Need::Change("org.yeet.agent.attach"))
            .await?;
        self.local.ensure_idle()?;
        let status = self.local.status();
        match status.attachment.as_str() {
            "detached" => {
                self.local.server_call(|c| c.attach()).await?;
                self.local.shared.set_detached(None);
            }
            // Reaching the server undoes a forced switch; try now.
            "forced" => {}
            _ => {
                return Err(AgentError::NotDetached {
                    reason: "this host follows the server already".into(),
                });
            }
        }
        self.local.shared.check_now();
        Ok(())
    }
}

/// A unix stream whose reads fail once a client sends more than `MAX_MESSAGE` bytes
/// without ending a message (varlink messages end with a NUL byte), or stays silent for
/// `IDLE_TIMEOUT`, and whose writes fail when the client has not read them within
/// `WRITE_TIMEOUT`.
#[derive(Debug)]
pub struct Guarded(zlink::tokio::unix::Stream);

type StreamWrite = <zlink::tokio::unix::Stream as socket::Socket>::WriteHalf;

#[derive(Debug)]
pub struct GuardedWrite(StreamWrite);

#[derive(Debug)]
pub struct GuardedRead {
    inner: <zlink::tokio::unix::Stream as socket::Socket>::ReadHalf,
    since_message_end: usize,
}

impl socket::Socket for Guarded {
    type ReadHalf = GuardedRead;
    type WriteHalf = GuardedWrite;

    fn split(self) -> (GuardedRead, GuardedWrite) {
        let (inner, write) = self.0.split();
        (
            GuardedRead {
                inner,
                since_message_end: 0,
            },
            GuardedWrite(write),
        )
    }
}

impl socket::WriteHalf for GuardedWrite {
    async fn write(
        &mut self,
        buf: &[u8],
        fds: &[impl std::os::fd::AsFd],
        credentials: Option<&zlink::connection::PassedCredentials>,
    ) -> zlink::Result<()> {
        tokio::time::timeout(WRITE_TIMEOUT, self.0.write(buf, fds, credentials))
            .await
            .map_err(|_| {
                zlink::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stopped reading its replies",
                ))
            })?
    }
}

impl socket::ReadHalf for GuardedRead {
    async fn read(&mut self, buf: &mut [u8]) -> zlink::Result<ReadResult> {
        let got = tokio::time::timeout(IDLE_TIMEOUT, self.inner.read(buf))
            .await
            .map_err(|_| {
                zlink::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the client stayed silent",
                ))
            })??;
        let n = got.bytes_read().min(buf.len());
        match buf[..n].iter().rposition(|b| *b == 0) {
            Some(end) => self.since_message_end = n - end - 1,
            None => self.since_message_end += n,
        }
        if self.since_message_end > MAX_MESSAGE {
            return Err(zlink::Error::BufferOverflow);
        }
        Ok(got)
    }
}

/// Hands one accepted connection to a `zlink::Server`, then reports that no more come, so
/// that the server ends with its connection.
#[derive(Debug)]
struct OneConnection(Option<Connection<Guarded>>, bool);

impl zlink::Listener for OneConnection {
    type Socket = Guarded;

    async fn accept(&mut self) -> zlink::Result<Option<Connection<Guarded>>> {
        if let Some(conn) = self.0.take() {
            return Ok(Some(conn));
        }
        if !self.1 {
            self.1 = true;
            return Ok(None);
        }
        std::future::pending().await
    }
}

/// Creates the socket: root-owned, mode 0660, group `socket_group` (0600 when that group
/// does not exist, so that only root can use it).
fn bind(path: &Path, group: &str) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    // Created with the process umask (root-only writable at worst): nobody else can connect
    // before the mode below is set.
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    let gid = group_id(group);
    if gid.is_none() {
        tracing::warn!(group, "no such group; the local socket is for root only");
    }
    std::os::unix::fs::chown(path, Some(0), gid)?;
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Serves the local interface on `path` from a thread of its own, until the process ends.
pub fn serve(local: Arc<Local>, path: &Path) -> std::io::Result<std::thread::JoinHandle<()>> {
    let listener = bind(path, &local.config.socket_group)?;
    listener.set_nonblocking(true)?;
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("varlink".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the local interface");
                    return;
                }
            };
            let tasks = tokio::task::LocalSet::new();
            tasks.block_on(&runtime, accept_loop(local, listener, path));
        })
}

async fn accept_loop(local: Arc<Local>, listener: std::os::unix::net::UnixListener, path: PathBuf) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve {}", path.display());
            return;
        }
    };
    tracing::info!(socket = %path.display(), "local interface ready");
    let clients = Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    // uid → connections open; one task owns this thread, so a RefCell will do.
    let per_user = std::rc::Rc::new(std::cell::RefCell::new(std::collections::HashMap::<
        u32,
        usize,
    >::new()));
    loop {
        // Beyond MAX_CLIENTS, new connections wait in the backlog until one ends.
        let Ok(permit) = clients.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "cannot accept a local client");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let caller = match stream.peer_cred() {
            Ok(c) => Caller {
                uid: c.uid(),
                gid: c.gid(),
                pid: c.pid(),
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a local client's credentials");
                continue;
            }
        };
        let stream = match zlink::tokio::unix::Stream::try_from(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot set up a local client's connection");
                continue;
            }
        };
        {
            let mut open = per_user.borrow_mut();
            let count = open.entry(caller.uid).or_default();
            if *count >= MAX_CLIENTS_PER_USER {
                // Debug, not warn: a flood of refused connections must not flood the journal.
                tracing::debug!(
                    uid = caller.uid,
                    "too many local connections from one user; closing the newest"
                );
                continue;
            }
            *count += 1;
        }
        let caller_uid = caller.uid;
        let service = AgentService {
            local: local.clone(),
            caller,
        };
        let conn = Connection::new(Guarded(stream));
        let per_user = per_user.clone();
        tokio::task::spawn_local(async move {
            let server = zlink::Server::new(OneConnection(Some(conn), false), service);
            if let Err(e) = server.run().await {
                tracing::debug!(error = %e, "local client dropped");
            }
            if let Some(count) = per_user.borrow_mut().get_mut(&caller_uid) {
                *count = count.saturating_sub(1);
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_groups_and_processes_are_read_from_the_system() {
        assert_eq!(group_id("root"), Some(0));
        assert_eq!(group_id("no-such-group-yeet"), None);
        assert_eq!(user_name(0).as_deref(), Some("root"));
        let me = Caller {
            uid: 0,
            gid: 0,
            pid: None,
        };
        assert_eq!(me.describe(), "root (uid 0)");
        assert!(me.groups().contains(&0));
        // The start time is found after the command name, whatever that holds.
        let pid = std::process::id() as i32;
        assert!(process_start_time(pid).is_some_and(|t| t > 0));
        assert_eq!(process_start_time(i32::MAX), None);
    }
}
