//! The fleet-wide nonce log: a request is accepted once per fleet, across restarts and
//! replicas, because every accepted nonce is written to the database (unique per key) before
//! the request proceeds. Writing one row per request would cap the request rate at the
//! database's commit rate, so writes are group-committed: requests that arrive while a batch
//! is being written wait for the next batch, which takes all of them in one statement.
//!
//! The in-memory `NonceCache` stays in front: it refuses replays and over-share keys
//! without a database round trip, and only what it accepts is written here.

use std::collections::HashSet;
use tokio::sync::{mpsc, oneshot};

use crate::store::Store;

/// Most nonces written in one statement (3 bound values each, within every backend's limit).
const MAX_BATCH: usize = 512;

struct Pending {
    key_id: String,
    nonce: String,
    /// The request's signed timestamp: a replay carries the same one.
    signed_at: i64,
    /// `Ok(true)` when the nonce was new.
    done: oneshot::Sender<Result<bool, String>>,
}

pub(crate) struct NonceLog {
    tx: mpsc::Sender<Pending>,
}

impl NonceLog {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(store: Store) -> NonceLog {
        let (tx, mut rx) = mpsc::channel::<Pending>(16 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                commit(&store, std::mem::take(&mut batch)).await;
            }
        });
        NonceLog { tx }
    }

    /// Records a nonce; `Ok(false)` when the fleet has seen it before.
    pub(crate) async fn record(
        &self,
        key_id: &str,
        nonce: &str,
        signed_at: i64,
    ) -> Result<bool, String> {
        let (done, result) = oneshot::channel();
        let pending = Pending {
            key_id: key_id.to_owned(),
            nonce: nonce.to_owned(),
            signed_at,
            done,
        };
        self.tx
            .send(pending)
            .await
            .map_err(|_| "the nonce log has stopped".to_owned())?;
        result
            .await
            .map_err(|_| "the nonce log dropped a request".to_owned())?
    }
}

async fn commit(store: &Store, batch: Vec<Pending>) {
    // The same nonce twice in one batch: only the first can be new.
    let mut in_batch = HashSet::new();
    let mut rows = Vec::with_capacity(batch.len());
    let mut answers = Vec::with_capacity(batch.len());
    for p in batch {
        let id = (p.key_id, p.nonce);
        if in_batch.insert(id.clone()) {
            rows.push((id.0.clone(), id.1.clone(), p.signed_at));
            answers.push((Some(id), p.done));
        } else {
            answers.push((None, p.done));
        }
    }
    match store.record_nonces(&rows).await {
        Ok(fresh) => {
            for (id, done) in answers {
                let _ = done.send(Ok(id.is_some_and(|id| fresh.contains(&id))));
            }
        }
        Err(e) => {
            let why = format!("cannot record nonces: {e}");
            for (_, done) in answers {
                let _ = done.send(Err(why.clone()));
            }
        }
    }
}
