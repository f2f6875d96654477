//! Batched reads of what each host last tried to activate. A release wakes every held
//! check-in at once, and each must know whether its host already tried the new system
//! before offering it. One query per host made those reads the slowest part of a wake (at
//! 20,000 hosts over 3 replicas, a second of the median): here they are batched. Every
//! read still sees the database as it is after the check-in asked, so a report made
//! through another replica a moment earlier counts.

use std::collections::HashMap;

use super::batch::{BatchError, Batcher};
use crate::store::Store;

/// Most hosts read in one statement (one bound value each).
const MAX_BATCH: usize = 512;

/// host id → the store path it last tried to activate (`None`: never, or removed).
pub(crate) type AttemptReader = Batcher<i64, Option<String>>;

/// Starts the reader task on the current runtime.
pub(crate) fn start(store: Store) -> AttemptReader {
    Batcher::start(
        "the attempt reader",
        MAX_BATCH,
        move |host_ids: Vec<i64>| {
            let store = store.clone();
            async move {
                let mut ids = host_ids.clone();
                ids.sort_unstable();
                ids.dedup();
                let paths: HashMap<i64, String> = store
                    .last_result_paths(&ids)
                    .await
                    .map_err(|e| BatchError::store("cannot read the hosts' last attempts", &e))?
                    .into_iter()
                    .collect();
                Ok(host_ids.iter().map(|id| paths.get(id).cloned()).collect())
            }
        },
    )
}
