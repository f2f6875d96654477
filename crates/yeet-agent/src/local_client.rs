//! The client side of the local interface: what `yeet-agent status`, `log`, `check-now`,
//! `detach`, `switch` and `attach` send to the agent's socket, so that a member of the
//! `yeet` group needs no root to use them.

use futures_util::{Stream, StreamExt};
use std::path::Path;
use std::time::{Duration, Instant};
use thiserror::Error;

use crate::varlink::{AgentError, DetachReply, LogReply, Progress, StatusReply};

#[zlink::proxy(interface = "org.yeet.Agent", rename_all_arguments = "camelCase")]
pub trait AgentProxy {
    async fn get_status(&mut self) -> zlink::Result<Result<StatusReply, AgentError>>;
    async fn get_log(&mut self) -> zlink::Result<Result<LogReply, AgentError>>;
    async fn check_now(&mut self) -> zlink::Result<Result<(), AgentError>>;
    async fn detach(&mut self, reason: &str) -> zlink::Result<Result<DetachReply, AgentError>>;
    #[zlink(more)]
    async fn switch(
        &mut self,
        store_path: &str,
    ) -> zlink::Result<impl Stream<Item = zlink::Result<Result<Progress, AgentError>>>>;
    #[zlink(more)]
    async fn force_switch(
        &mut self,
        store_path: &str,
    ) -> zlink::Result<impl Stream<Item = zlink::Result<Result<Progress, AgentError>>>>;
    async fn attach(&mut self) -> zlink::Result<Result<(), AgentError>>;
}

#[derive(Debug, Error)]
pub enum LocalError {
    #[error("cannot reach the agent at {socket}: {reason}; {hint}")]
    Connect {
        socket: String,
        reason: String,
        hint: &'static str,
    },
    #[error("the agent's socket failed: {0}")]
    Protocol(String),
    #[error("{0}")]
    Agent(#[from] AgentError),
}

type Connection = zlink::tokio::unix::Connection;

/// Runs `f` against the agent on `socket`, on a runtime of its own.
pub fn with_agent<T>(
    socket: &Path,
    f: impl AsyncFnOnce(&mut Connection) -> Result<T, LocalError>,
) -> Result<T, LocalError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LocalError::Protocol(e.to_string()))?;
    runtime.block_on(async {
        let mut conn = zlink::tokio::unix::connect(socket).await.map_err(|e| {
            let reason = e.to_string();
            let hint = if reason.contains("ermission denied") {
                "use it as root, or as a member of the agent's socket group (yeet)"
            } else {
                "is yeet-agent running?"
            };
            LocalError::Connect {
                socket: socket.display().to_string(),
                reason,
                hint,
            }
        })?;
        f(&mut conn).await
    })
}

/// A call's two layers of failure (the socket, the agent's answer) as one error.
pub fn answer<T>(reply: zlink::Result<Result<T, AgentError>>) -> Result<T, LocalError> {
    reply
        .map_err(|e| LocalError::Protocol(e.to_string()))?
        .map_err(LocalError::Agent)
}

/// How long a client that lost the agent mid-switch keeps asking how the switch ended.
const FOLLOW_AFTER_RESTART: Duration = Duration::from_secs(600);

/// Switches (or, `force`, force-switches) and hands each progress reply to `seen`; returns
/// the last one (the outcome) or the error that ended the switch. When the agent goes away
/// mid-switch (a switch restarts it when its unit changed), asks the restarted agent on
/// `socket` how the switch ends.
pub async fn switch_following(
    conn: &mut Connection,
    socket: &Path,
    store_path: &str,
    force: bool,
    seen: impl FnMut(&Progress),
) -> Result<Progress, LocalError> {
    let protocol = |e: zlink::Error| LocalError::Protocol(e.to_string());
    let streamed = if force {
        drain(conn.force_switch(store_path).await.map_err(protocol)?, seen).await
    } else {
        drain(conn.switch(store_path).await.map_err(protocol)?, seen).await
    };
    match streamed {
        Err(LocalError::Protocol(why)) => follow_by_status(socket, store_path, &why).await,
        other => other,
    }
}

/// Polls the agent's status until the switch to `store_path` has an outcome.
async fn follow_by_status(
    socket: &Path,
    store_path: &str,
    why: &str,
) -> Result<Progress, LocalError> {
    let deadline = Instant::now() + FOLLOW_AFTER_RESTART;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Ok(mut conn) = zlink::tokio::unix::connect(socket).await else {
            continue;
        };
        let Ok(Ok(reply)) = conn.get_status().await else {
            continue;
        };
        let status = reply.status;
        let outcome = match (status.activation, status.last_result) {
            (Some(a), _) if a.store_path == store_path => a.result.zip(a.reason),
            (Some(_), _) => None,
            (None, Some(l)) if l.store_path == store_path => Some((l.result, l.reason)),
            (None, _) => None,
        };
        if let Some((result, reason)) = outcome {
            return match result.as_str() {
                "confirmed" => Ok(Progress {
                    store_path: store_path.to_owned(),
                    phase: "done".into(),
                    log: String::new(),
                    result: Some(result),
                }),
                "untrusted" => Err(AgentError::Untrusted { reason }.into()),
                _ => Err(AgentError::SwitchFailed { result, reason }.into()),
            };
        }
    }
    Err(LocalError::Protocol(format!(
        "lost the agent during the switch ({why}), and it did not say how the switch ended; see `yeet-agent status`"
    )))
}

async fn drain(
    stream: impl Stream<Item = zlink::Result<Result<Progress, AgentError>>>,
    mut seen: impl FnMut(&Progress),
) -> Result<Progress, LocalError> {
    let mut stream = std::pin::pin!(stream);
    let mut last = None;
    while let Some(item) = stream.next().await {
        let progress = answer(item)?;
        seen(&progress);
        last = Some(progress);
    }
    last.ok_or_else(|| LocalError::Protocol("the agent ended the switch without a result".into()))
}
