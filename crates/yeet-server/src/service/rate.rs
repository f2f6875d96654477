//! Token buckets by key: a burst of `burst` requests, then one per `refill`. Used for new
//! registrations per source network, for osquery requests per node and per source, and
//! (a token a byte) for the log bytes each osquery node may send.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::lock;

/// Buckets kept before full ones are forgotten (a full bucket allows a burst anyway).
const MAX_BUCKETS: usize = 100_000;

struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub(crate) struct RateLimiter<K> {
    burst: f64,
    refill_secs: f64,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(burst: u32, refill: Duration) -> Self {
        RateLimiter {
            burst: f64::from(burst.max(1)),
            refill_secs: refill.as_secs_f64().max(1e-3),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for `key`; false when its bucket is empty.
    pub fn take(&self, key: &K) -> bool {
        self.take_n(key, 1.0)
    }

    /// Takes `n` tokens for `key` at once (bytes, say); false, taking none, when its bucket
    /// holds fewer.
    pub fn take_n(&self, key: &K, n: f64) -> bool {
        let (burst, refill) = (self.burst, self.refill_secs);
        let mut buckets = lock(&self.buckets);
        if buckets.len() > MAX_BUCKETS {
            buckets.retain(|_, b| b.tokens + b.updated.elapsed().as_secs_f64() / refill < burst);
        }
        let now = Instant::now();
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.updated).as_secs_f64() / refill).min(burst);
        b.updated = now;
        if b.tokens >= n {
            b.tokens -= n;
            true
        } else {
            false
        }
    }
}
