//! Forwarding result lines to a SIEM: each stored result line is also written as one JSON
//! object per line (`{"node", "received_at", "line"}`) to a file, and/or posted in batches
//! (newline-delimited JSON) to an HTTP endpoint.
//!
//! The file is appended before the node's batch is acknowledged, so a line is never
//! acknowledged unforwarded (a failed write fails the request and osqueryd retries). The
//! HTTP endpoint is fed through a bounded queue: a slow or down SIEM must not stall the
//! fleet's logging, so when the queue is full a batch is dropped with a warning (the lines
//! stay in yeet's own log store).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// Batches waiting for the HTTP endpoint before new ones are dropped.
const QUEUE_BATCHES: usize = 256;

pub(crate) struct Forwarder {
    file: Option<PathBuf>,
    http: Option<tokio::sync::mpsc::Sender<String>>,
}

impl Forwarder {
    /// Starts the HTTP sender, when a URL is set; must run inside the tokio runtime for it.
    pub fn new(file: Option<PathBuf>, url: Option<String>) -> Forwarder {
        let http = url.map(|url| {
            let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_BATCHES);
            if tokio::runtime::Handle::try_current().is_ok() {
                tokio::spawn(send_batches(url, rx));
            }
            tx
        });
        Forwarder { file, http }
    }

    pub fn is_on(&self) -> bool {
        self.file.is_some() || self.http.is_some()
    }

    /// Forwards one batch of JSON lines (each ending in a newline).
    pub async fn forward(&self, batch: String) -> std::io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if let Some(path) = self.file.clone() {
            let data = batch.clone();
            tokio::task::spawn_blocking(move || {
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)?;
                f.write_all(data.as_bytes())
            })
            .await
            .map_err(std::io::Error::other)??;
        }
        if let Some(tx) = &self.http
            && tx.try_send(batch).is_err()
        {
            tracing::warn!("the osquery forwarding endpoint is behind; a batch was not forwarded");
        }
        Ok(())
    }
}

/// Posts queued batches, one at a time, retrying each a few times.
async fn send_batches(url: String, mut rx: tokio::sync::mpsc::Receiver<String>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    while let Some(batch) = rx.recv().await {
        for attempt in 1..=3u64 {
            let (agent, target, body) = (agent.clone(), url.clone(), batch.clone());
            let sent = tokio::task::spawn_blocking(move || {
                agent
                    .post(&target)
                    .header("Content-Type", "application/x-ndjson")
                    .send(body.as_bytes())
                    .map(drop)
            })
            .await;
            match sent {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    tracing::warn!(%url, attempt, error = %e, "forwarding osquery results failed")
                }
                Err(e) => tracing::warn!(error = %e, "the forwarding task failed"),
            }
            tokio::time::sleep(Duration::from_secs(attempt)).await;
        }
    }
}
