//! The fleet-wide nonce log: a request is accepted once per fleet, across restarts and
//! replicas, because every accepted nonce is written to the database (unique per key and
//! signed time) before the request proceeds. Writing one row per request would cap the
//! request rate at the database's commit rate, so writes are group-committed (`Batcher`):
//! requests that arrive while a batch is being written wait for the next batch, which takes
//! all of them in one statement.
//!
//! The in-memory `NonceCache` stays in front: it refuses replays and over-share keys
//! without a database round trip, and only what it accepts is written here.

use std::collections::HashSet;

use super::batch::{BatchError, Batcher};
use crate::store::Store;

/// Most nonces written in one statement (3 bound values each, within every backend's limit).
const MAX_BATCH: usize = 512;

/// A nonce to record: key id, nonce, and the request's signed timestamp (a replay carries
/// the same one).
type NonceRow = (String, String, i64);

pub(crate) struct NonceLog {
    /// Answers `true` when the nonce was new.
    batches: Batcher<NonceRow, bool>,
}

impl NonceLog {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(store: Store) -> NonceLog {
        let batches = Batcher::start("the nonce log", MAX_BATCH, move |batch: Vec<NonceRow>| {
            let store = store.clone();
            async move { commit(&store, batch).await }
        });
        NonceLog { batches }
    }

    /// Records a nonce; `Ok(false)` when the fleet has seen it before.
    pub(crate) async fn record(
        &self,
        key_id: &str,
        nonce: &str,
        signed_at: i64,
    ) -> Result<bool, BatchError> {
        self.batches
            .call((key_id.to_owned(), nonce.to_owned(), signed_at))
            .await
    }
}

async fn commit(store: &Store, batch: Vec<NonceRow>) -> Result<Vec<bool>, BatchError> {
    // The same nonce twice in one batch: only the first can be new.
    let mut in_batch = HashSet::new();
    let mut rows = Vec::with_capacity(batch.len());
    let mut first = Vec::with_capacity(batch.len());
    for row in batch {
        let id = (row.0.clone(), row.1.clone());
        let is_first = in_batch.insert(id.clone());
        if is_first {
            rows.push(row);
        }
        first.push(is_first.then_some(id));
    }
    let fresh = store
        .record_nonces(&rows)
        .await
        .map_err(|e| BatchError::store("cannot record nonces", &e))?;
    Ok(first
        .into_iter()
        .map(|id| id.is_some_and(|id| fresh.contains(&id)))
        .collect())
}
