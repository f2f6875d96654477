//! The client side of the local interface: what `yeet-agent status`, `log`, `check-now`,
//! `detach`, `switch` and `attach` send to the agent's socket, so that a member of the
//! `yeet` group needs no root to use them.

use futures_util::{Stream, StreamExt};
use std::path::Path;
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

/// Switches (or, `force`, force-switches) and hands each progress reply to `seen`; returns
/// the last one (the outcome) or the error that ended the switch.
pub async fn switch_following(
    conn: &mut Connection,
    store_path: &str,
    force: bool,
    seen: impl FnMut(&Progress),
) -> Result<Progress, LocalError> {
    let protocol = |e: zlink::Error| LocalError::Protocol(e.to_string());
    if force {
        drain(conn.force_switch(store_path).await.map_err(protocol)?, seen).await
    } else {
        drain(conn.switch(store_path).await.map_err(protocol)?, seen).await
    }
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
