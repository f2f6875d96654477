//! Counted shares of a limited resource: at most `total` held at once, and at most
//! `per_owner` by any one owner (a network's connections, a key's uploads). A share is
//! given back when its guard is dropped, however the work holding it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

pub struct Shares {
    total: usize,
    per_owner: usize,
    /// (shares held in all, owner → shares it holds)
    held: Mutex<(usize, HashMap<String, usize>)>,
}

/// One share, held until dropped.
pub struct Share {
    shares: Arc<Shares>,
    owner: String,
}

impl Shares {
    pub fn new(total: usize, per_owner: usize) -> Arc<Shares> {
        Arc::new(Shares {
            total,
            per_owner,
            held: Mutex::new((0, HashMap::new())),
        })
    }

    /// Every guarded map stays consistent after any single update, so a poisoned lock
    /// (a panicking holder) is recovered rather than propagated.
    fn lock(&self) -> std::sync::MutexGuard<'_, (usize, HashMap<String, usize>)> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A share for `owner`, or `Err(held)` with how many `owner` holds when the owner or
    /// everybody is at the limit.
    pub fn take(self: &Arc<Self>, owner: &str) -> Result<Share, usize> {
        let mut held = self.lock();
        let mine = held.1.get(owner).copied().unwrap_or(0);
        if held.0 >= self.total || mine >= self.per_owner {
            return Err(mine);
        }
        held.0 += 1;
        held.1.insert(owner.to_owned(), mine + 1);
        Ok(Share {
            shares: self.clone(),
            owner: owner.to_owned(),
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut held = self.shares.lock();
        held.0 = held.0.saturating_sub(1);
        if let Some(n) = held.1.get_mut(&self.owner) {
            *n -= 1;
            if *n == 0 {
                held.1.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_and_the_total_are_capped_and_shares_come_back() {
        let shares = Shares::new(3, 2);
        let a1 = shares.take("a").unwrap();
        let _a2 = shares.take("a").unwrap();
        assert_eq!(shares.take("a").err(), Some(2));
        let _b1 = shares.take("b").unwrap();
        // The total is reached: nobody else gets one.
        assert_eq!(shares.take("c").err(), Some(0));
        drop(a1);
        assert!(shares.take("c").is_ok());
        assert_eq!(
            shares.lock().1.get("c"),
            None,
            "a dropped share is given back"
        );
    }
}
