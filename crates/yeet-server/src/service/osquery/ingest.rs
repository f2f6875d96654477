//! What nodes send: log batches, distributed query reads and results, carve sessions and
//! their blocks. Every request is checked against the node that sent it: a node reads only
//! queries meant for it, answers only those it was sent, and uploads only carves that
//! answer a carve an operator started on it.

use sha2::{Digest, Sha256};
use std::sync::atomic::Ordering;
use yeet_proto::ErrorCode;

use super::Node;
use crate::service::{Result, Service, ServiceError, now};
use crate::store::{CarveRow, NewLogLine, TargetAnswer};
use osquery_tls::Empty;
use osquery_tls::carve::{BlockRequest, BlockResponse, InitRequest, InitResponse};
use osquery_tls::distributed::{ReadResponse, WriteRequest};
use osquery_tls::log::{LineSummary, LogRequest, LogType};

/// Longest log line stored (osqueryd's own `--logger_tls_max_linesize` default).
pub const MAX_LOG_LINE_BYTES: usize = 1 << 20;
/// Prefix of the query ids yeet gives distributed queries: `yeet-<campaign id>`.
const QUERY_ID_PREFIX: &str = "yeet-";
/// Longest error message kept from a node, per query.
const MAX_MESSAGE_CHARS: usize = 4096;

/// The query id of a campaign.
pub(crate) fn query_id(campaign_id: i64) -> String {
    format!("{QUERY_ID_PREFIX}{campaign_id}")
}

/// The campaign a query id names, if it is one of ours.
fn campaign_of(query_id: &str) -> Option<i64> {
    query_id.strip_prefix(QUERY_ID_PREFIX)?.parse().ok()
}

fn invalid_carve(message: impl Into<String>) -> ServiceError {
    ServiceError::refused(ErrorCode::InvalidCarve, message)
}

fn unknown_carve() -> ServiceError {
    ServiceError::refused(ErrorCode::UnknownCarve, ErrorCode::UnknownCarve.meaning())
}

/// What the log table keeps of one line: its text as the node sent it, its name (query or
/// severity) and when it was logged. A line of the wrong shape is kept under the name ""
/// rather than lost.
fn log_line(node: &Node, log_type: LogType, line: &str) -> Option<NewLogLine> {
    if line.len() > MAX_LOG_LINE_BYTES {
        tracing::warn!(node = %node.host_identifier, bytes = line.len(), "an osquery log line is too long; dropped");
        return None;
    }
    let summary = LineSummary::of(log_type, line).unwrap_or_else(|e| {
        tracing::warn!(node = %node.host_identifier, error = %e, "kept a malformed osquery log line");
        LineSummary {
            name: String::new(),
            unix_time: 0,
        }
    });
    Some(NewLogLine {
        node_id: node.id,
        kind: log_type.as_str(),
        name: summary.name.chars().take(255).collect(),
        logged_at: i64::try_from(summary.unix_time).unwrap_or(i64::MAX),
        line: line.to_owned(),
    })
}

impl Service {
    /// Stores a batch of log lines.
    pub async fn osquery_log(&self, node: &Node, req: LogRequest<'_>) -> Result<Empty> {
        let lines: Vec<NewLogLine> = req
            .data
            .iter()
            .filter_map(|line| log_line(node, req.log_type, line.get()))
            .collect();
        let received_at = now();
        // A node's log volume is bounded: per hour here, stored in the database.
        let bytes: usize = lines.iter().map(|l| l.line.len()).sum();
        let settings = &self.osquery.settings;
        if !self.osquery.log_bytes.take_n(&node.id, bytes as f64) {
            self.store.count_log_refusal(node.id, received_at).await?;
            tracing::warn!(node = %node.host_identifier, bytes, "an osquery node is over its log rate; batch refused");
            return Err(ServiceError::refused(
                ErrorCode::RateLimited,
                format!(
                    "this node sends more than {} log bytes an hour (node_log_bytes_per_hour); osqueryd keeps the batch and retries",
                    settings.node_log_bytes_per_hour
                ),
            ));
        }
        let cap = i64::try_from(settings.node_log_bytes_stored).unwrap_or(i64::MAX);
        if self
            .store
            .insert_log_lines(&lines, received_at, cap)
            .await?
            .is_some()
        {
            tracing::warn!(node = %node.host_identifier, bytes, "an osquery node has its stored logs' budget full; batch refused");
            return Err(ServiceError::refused(
                ErrorCode::RateLimited,
                format!(
                    "this node's stored logs reached {} bytes (node_log_bytes_stored) until older lines expire; osqueryd keeps the batch and retries",
                    settings.node_log_bytes_stored
                ),
            ));
        }
        if req.log_type == LogType::Result && self.osquery.forwarder.is_on() {
            let mut batch = String::new();
            for l in &lines {
                // The stored text is the node's own JSON, so it goes into the record as is.
                let line = serde_json::value::RawValue::from_string(l.line.clone())
                    .map_err(|e| ServiceError::System(format!("a stored log line: {e}")))?;
                let record = serde_json::json!({"node": node.host_identifier, "received_at": received_at, "line": line});
                batch.push_str(&record.to_string());
                batch.push('\n');
            }
            self.osquery
                .forwarder
                .forward(batch)
                .await
                .map_err(|e| ServiceError::io("forwarding osquery results", e))?;
        }
        Ok(Empty {})
    }

    /// The distributed queries this node has not been sent yet.
    pub async fn osquery_read(&self, node: &Node) -> Result<ReadResponse> {
        let now = now();
        // With no campaign open anywhere, a read costs no database query.
        if self.osquery.campaign_deadline.load(Ordering::Relaxed) <= now {
            return Ok(ReadResponse::default());
        }
        let mut answer = ReadResponse::default();
        for (id, sql) in self.store.take_unsent_queries(node.id, now).await? {
            answer.queries.insert(query_id(id), sql);
        }
        if !answer.queries.is_empty() && self.osquery.settings.accelerate_secs > 0 {
            answer.accelerate = Some(self.osquery.settings.accelerate_secs);
        }
        Ok(answer)
    }

    /// Stores a node's results for the queries it was sent; results for anything else
    /// (another node's campaign, an unknown id, a second answer) are ignored and logged.
    pub async fn osquery_write(&self, node: &Node, req: WriteRequest<'_>) -> Result<Empty> {
        let mut answers = Vec::new();
        let mut foreign = Vec::new();
        for outcome in req.outcomes() {
            let Some(campaign_id) = campaign_of(&outcome.id) else {
                foreign.push(outcome.id);
                continue;
            };
            // The rows are the node's own JSON, checked to be an array of objects.
            let rows = outcome.rows.unwrap_or("[]").to_owned();
            answers.push(TargetAnswer {
                campaign_id,
                status: outcome.status,
                message: outcome
                    .message
                    .map(|m| m.chars().take(MAX_MESSAGE_CHARS).collect()),
                rows,
            });
        }
        let stored = self.store.record_answers(node.id, &answers, now()).await?;
        foreign.extend(
            answers
                .iter()
                .filter(|a| !stored.contains(&a.campaign_id))
                .map(|a| query_id(a.campaign_id)),
        );
        if !foreign.is_empty() {
            tracing::warn!(node = %node.host_identifier, ?foreign, "ignored results for queries this node was not sent");
        }
        Ok(Empty {})
    }

    /// Opens a carve session for a carve that answers a carve campaign sent to this node.
    pub async fn osquery_carve_init(&self, node: &Node, req: InitRequest) -> Result<InitResponse> {
        let settings = &self.osquery.settings;
        req.validate(settings.max_block_bytes, settings.max_carve_bytes)
            .map_err(|e| invalid_carve(e.to_string()))?;
        let campaign = self.carve_campaign_for(node, &req.request_id).await?;
        if self.store.open_carves_of(node.id).await? >= settings.max_open_carves {
            return Err(ServiceError::refused(
                ErrorCode::RateLimited,
                format!(
                    "this node has {} carves open already",
                    settings.max_open_carves
                ),
            ));
        }
        let session_id = super::fresh_node_key()?;
        let as_i64 = |n: u64| i64::try_from(n).map_err(|_| invalid_carve("size out of range"));
        let carve = self
            .store
            .insert_carve(&CarveRow {
                id: 0,
                session_id: session_id.clone(),
                node_id: node.id,
                campaign_id: Some(campaign),
                request_id: req.request_id.clone(),
                carve_id: req.carve_id.chars().take(64).collect(),
                block_count: as_i64(req.block_count)?,
                block_size: as_i64(req.block_size)?,
                carve_size: as_i64(req.carve_size)?,
                started_at: now(),
                completed_at: None,
                sha256: None,
            })
            .await?;
        tracing::info!(node = %node.host_identifier, carve = carve.id, bytes = req.carve_size, "osquery carve started");
        if carve.block_count == 0 {
            self.finish_carve(&carve).await?;
        }
        Ok(InitResponse {
            session_id,
            success: true,
        })
    }

    /// The campaign a carve's `request_id` names, if it is a carve sent to this node.
    async fn carve_campaign_for(&self, node: &Node, request_id: &str) -> Result<i64> {
        let refuse = || invalid_carve("this carve answers no carve request sent to this node");
        let campaign_id = campaign_of(request_id).ok_or_else(refuse)?;
        let campaign = self
            .store
            .campaign_by_id(campaign_id)
            .await?
            .ok_or_else(refuse)?;
        let sent = self
            .store
            .campaign_targets(campaign_id)
            .await?
            .iter()
            .any(|t| t.node_id == node.id && t.sent_at.is_some());
        if campaign.kind != "carve" || !sent {
            return Err(refuse());
        }
        Ok(campaign_id)
    }

    /// The carve a block's session id names: a block's only credential, checked before the
    /// rest of its body is read.
    pub async fn osquery_carve_session(&self, session_id: &str) -> Result<CarveRow> {
        if session_id.is_empty() || session_id.len() > 128 {
            return Err(unknown_carve());
        }
        self.store
            .carve_by_session(session_id)
            .await?
            .ok_or_else(unknown_carve)
    }

    /// Stores one block of a carve; blocks may come in any order and more than once.
    pub async fn osquery_carve_block(
        &self,
        carve: CarveRow,
        req: BlockRequest,
    ) -> Result<BlockResponse> {
        if req.session_id != carve.session_id {
            return Err(unknown_carve());
        }
        // osqueryd sends no node key with blocks; a client that does must be the owner.
        if let Some(key) = req.node_key.as_deref() {
            let node = self.osquery_node_unlimited(key).await?;
            if node.id != carve.node_id {
                return Err(unknown_carve());
            }
        }
        if req.request_id != carve.request_id {
            return Err(invalid_carve("request_id does not match the carve's"));
        }
        let announced = InitRequest {
            block_count: carve.block_count as u64,
            block_size: carve.block_size as u64,
            carve_size: carve.carve_size as u64,
            carve_id: String::new(),
            request_id: String::new(),
            node_key: String::new(),
        };
        let expected = announced.expected_block_len(req.block_id).ok_or_else(|| {
            invalid_carve(format!(
                "block {} is out of range: the carve has {} blocks",
                req.block_id, carve.block_count
            ))
        })?;
        let data = req
            .bytes()
            .map_err(|e| invalid_carve(format!("block data is not base64: {e}")))?;
        if data.len() as u64 != expected {
            return Err(invalid_carve(format!(
                "block {} holds {} bytes; the carve's announced sizes make it {expected}",
                req.block_id,
                data.len()
            )));
        }
        let new = self
            .store
            .insert_carve_block(carve.id, req.block_id as i64, &data)
            .await?;
        if new && self.store.carve_blocks_received(carve.id).await? == carve.block_count {
            self.finish_carve(&carve).await?;
        }
        Ok(BlockResponse { success: true })
    }

    /// Records a complete carve's checksum, read back block by block.
    async fn finish_carve(&self, carve: &CarveRow) -> Result<()> {
        let mut hash = Sha256::new();
        for block_id in 0..carve.block_count {
            let block = self
                .store
                .carve_block(carve.id, block_id)
                .await?
                .ok_or_else(|| {
                    ServiceError::System(format!("carve {} lost block {block_id}", carve.id))
                })?;
            hash.update(&block);
        }
        let sha256 = hex::encode(hash.finalize());
        self.store.complete_carve(carve.id, &sha256, now()).await?;
        tracing::info!(carve = carve.id, %sha256, "osquery carve complete");
        Ok(())
    }
}
