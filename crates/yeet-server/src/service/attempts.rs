//! Batched reads of what each host last tried to activate. A release wakes every held
//! check-in at once, and each must know whether its host already tried the new system
//! before offering it. One query per host made those reads the slowest part of a wake (at
//! 20,000 hosts over 3 replicas, a second of the median): here the reads that arrive while
//! one query runs wait for the next, which takes all of them. Every read still sees the
//! database as it is after the check-in asked, so a report made through another replica
//! a moment earlier counts.

use std::collections::HashMap;
use tokio::sync::{mpsc, oneshot};

use crate::store::Store;

/// Most hosts read in one statement (one bound value each).
const MAX_BATCH: usize = 512;

struct Pending {
    host_id: i64,
    /// The host's last attempted store path (`None`: never tried one, or removed).
    done: oneshot::Sender<Result<Option<String>, String>>,
}

pub(crate) struct AttemptReader {
    tx: mpsc::Sender<Pending>,
}

impl AttemptReader {
    /// Starts the reader task on the current runtime.
    pub(crate) fn start(store: Store) -> AttemptReader {
        let (tx, mut rx) = mpsc::channel::<Pending>(16 * MAX_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
                answer(&store, std::mem::take(&mut batch)).await;
            }
        });
        AttemptReader { tx }
    }

    /// The store path `host_id` last tried to activate, if any.
    pub(crate) async fn last_attempted(&self, host_id: i64) -> Result<Option<String>, String> {
        let (done, result) = oneshot::channel();
        self.tx
            .send(Pending { host_id, done })
            .await
            .map_err(|_| "the attempt reader has stopped".to_owned())?;
        result
            .await
            .map_err(|_| "the attempt reader dropped a request".to_owned())?
    }
}

async fn answer(store: &Store, batch: Vec<Pending>) {
    let mut ids: Vec<i64> = batch.iter().map(|p| p.host_id).collect();
    ids.sort_unstable();
    ids.dedup();
    match store.last_result_paths(&ids).await {
        Ok(paths) => {
            let paths: HashMap<i64, String> = paths.into_iter().collect();
            for p in batch {
                let _ = p.done.send(Ok(paths.get(&p.host_id).cloned()));
            }
        }
        Err(e) => {
            let why = format!("cannot read the hosts' last attempts: {e}");
            for p in batch {
                let _ = p.done.send(Err(why.clone()));
            }
        }
    }
}
