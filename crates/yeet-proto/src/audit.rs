//! The audit log's events on the wire, how each is hashed into the chain, and how a chain is
//! verified. Server (`yeet-server audit verify`, offline) and CLI (`yeet audit verify`, over
//! the API) verify with this one function, so they cannot disagree about what is intact.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first event a database ever records.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The action of the event that retention appends after dropping old events: its details
/// name the hash of the last dropped event, which the first kept event links to.
pub const CHECKPOINT: &str = "audit.checkpoint";

/// The action of a refused read (an operator asking for a host outside their scope, say);
/// reads that are answered are not recorded.
pub const READ_REFUSED: &str = "read";

/// The actor of what the server does by itself: a rollout's automatic transitions, audit
/// retention's checkpoints.
pub const SERVER_ACTOR: &str = "yeet-server";

/// A rollout's transitions, each recorded with its cause in `details`. Operators' actions
/// on rollouts (`rollout.pause`, ...) are recorded as their routes are.
pub const ROLLOUT_SUPERSEDED: &str = "rollout.superseded";
pub const ROLLOUT_WAVE_OPENED: &str = "rollout.wave-opened";
/// Every online host of the open wave confirmed: its bake began.
pub const ROLLOUT_BAKE_STARTED: &str = "rollout.bake-started";
pub const ROLLOUT_WAVE_PASSED: &str = "rollout.wave-passed";
pub const ROLLOUT_HALTED: &str = "rollout.halted";
pub const ROLLOUT_COMPLETED: &str = "rollout.completed";
/// Hosts deferred by their wave (offline then) were given the release on their return.
pub const ROLLOUT_DEFERRED_OPENED: &str = "rollout.deferred-opened";

/// The `outcome` of an action that was carried out; a refused one holds the error code.
pub const DONE: &str = "done";

/// One recorded action. Every field but `seq` and `hash` goes into `hash`, after
/// `prev_hash`: the chain, not `seq`, says in which order events happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Position in the database, for paging and for naming an event.
    pub seq: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// A user's name, `host:NAME` for a host acting for itself, or `local:USER` for
    /// `yeet-server admin` on the server host.
    pub actor: String,
    /// The signing key's fingerprint (`SHA256:...`); empty offline.
    pub key_id: String,
    /// What was done, e.g. `host.rename` (see the README's table).
    pub action: String,
    /// `done`, or the error code of a refusal.
    pub outcome: String,
    /// The hosts the action was about, by the names they had then.
    pub hosts: Vec<String>,
    /// The action's details, as a JSON object (never secret content).
    pub details: serde_json::Value,
    /// The client's address; empty when unknown (offline, in-process).
    pub address: String,
    /// The signed request's nonce; empty offline.
    pub nonce: String,
    pub prev_hash: String,
    pub hash: String,
}

/// One page of `GET /v1/audit`, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    /// Pass as `after` for the next page; absent on the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<i64>,
}

/// `GET /v1/audit` query: every filter is optional; all given must hold.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuditFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Unix milliseconds: events at or after.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
    /// Events with a `seq` above this (paging).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<i64>,
    /// At most this many events (the server caps it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The newest `limit` events instead of the oldest (still answered oldest first).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub newest: bool,
}

impl AuditFilter {
    /// `GET /v1/audit` with the fields that are set.
    pub fn path(&self) -> String {
        crate::api::paths::with_query(
            crate::api::paths::AUDIT,
            &[
                ("host", self.host.clone()),
                ("user", self.user.clone()),
                ("action", self.action.clone()),
                ("since_ms", self.since_ms.map(|v| v.to_string())),
                ("after", self.after.map(|v| v.to_string())),
                ("limit", self.limit.map(|v| v.to_string())),
                ("newest", self.newest.then(|| "true".to_owned())),
            ],
        )
    }
}

/// The hash of an event whose fields are these, following `prev_hash`: SHA-256, in hex,
/// over `prev_hash`, a newline, and a JSON array of the other hashed fields in a fixed
/// order (`details` as its compact JSON text, keys sorted).
#[allow(clippy::too_many_arguments)]
pub fn event_hash(
    prev_hash: &str,
    at_ms: i64,
    actor: &str,
    key_id: &str,
    action: &str,
    outcome: &str,
    hosts: &[String],
    details: &str,
    address: &str,
    nonce: &str,
) -> String {
    let fields = serde_json::json!([
        at_ms, actor, key_id, action, outcome, hosts, details, address, nonce
    ]);
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(fields.to_string().as_bytes());
    hex::encode(hasher.finalize())
}

impl AuditEvent {
    /// The hash this event's fields give.
    pub fn computed_hash(&self) -> String {
        event_hash(
            &self.prev_hash,
            self.at_ms,
            &self.actor,
            &self.key_id,
            &self.action,
            &self.outcome,
            &self.hosts,
            &self.details.to_string(),
            &self.address,
            &self.nonce,
        )
    }

    /// For a checkpoint: the hash of the last event retention dropped.
    pub fn checkpoint_anchor(&self) -> Option<&str> {
        (self.action == CHECKPOINT)
            .then(|| self.details.get("last_dropped_hash")?.as_str())
            .flatten()
    }
}

/// What is wrong with a chain, at the first event where it shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "problem", rename_all = "snake_case")]
pub enum ChainBreak {
    /// The event's fields no longer give its hash: its content was edited.
    Altered { seq: i64 },
    /// The event links to one that is not there: events before it were deleted.
    Removed { seq: i64, after_seq: Option<i64> },
    /// The event is not the one its successor links to: it was inserted.
    Inserted { seq: i64 },
    /// The event links to one stored after it: events were moved.
    Reordered { seq: i64, follows_seq: i64 },
    /// The chain ends before an event this client verified earlier (`seq` and `hash`
    /// pinned): the newest events were deleted, or the history was rewritten.
    PinnedHeadGone { seq: i64 },
}

impl std::fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChainBreak::Altered { seq } => write!(
                f,
                "event {seq} was altered: its fields no longer give its hash"
            ),
            ChainBreak::Removed {
                seq,
                after_seq: Some(after),
            } => write!(
                f,
                "events were removed between {after} and {seq}: event {seq} links to one that is gone (or event {after} was rewritten with a new hash)"
            ),
            ChainBreak::Removed {
                seq,
                after_seq: None,
            } => write!(
                f,
                "events were removed before {seq}, the oldest kept: it links to one that is gone, and no checkpoint names it"
            ),
            ChainBreak::Inserted { seq } => write!(
                f,
                "event {seq} was inserted: the event after it links to the one before it"
            ),
            ChainBreak::Reordered { seq, follows_seq } => write!(
                f,
                "events were reordered: event {seq} follows event {follows_seq}, which is stored after it"
            ),
            ChainBreak::PinnedHeadGone { seq } => write!(
                f,
                "event {seq}, verified earlier, is gone or changed: the newest events were removed or the history rewritten"
            ),
        }
    }
}

/// Checks that the event a client verified before (`seq` with `hash`) is still in
/// `events` unchanged, or was dropped by retention (a checkpoint names a later event's
/// predecessor and `seq` is older than every kept event).
pub fn check_pinned_head(events: &[AuditEvent], seq: i64, hash: &str) -> Result<(), ChainBreak> {
    if let Some(event) = events.iter().find(|e| e.seq == seq) {
        return if event.hash == hash {
            Ok(())
        } else {
            Err(ChainBreak::PinnedHeadGone { seq })
        };
    }
    let dropped_by_retention = events.first().is_some_and(|first| first.seq > seq)
        && events.iter().any(|e| e.checkpoint_anchor().is_some());
    if dropped_by_retention {
        Ok(())
    } else {
        Err(ChainBreak::PinnedHeadGone { seq })
    }
}

/// What both verifiers print with `--json`: whether the chain is intact, its extent, its
/// head, and the break when there is one.
pub fn verification_json(
    events: &[AuditEvent],
    outcome: &Result<(), ChainBreak>,
) -> serde_json::Value {
    let head = events.last();
    serde_json::json!({
        "intact": outcome.is_ok(),
        "events": events.len(),
        "first_seq": events.first().map(|e| e.seq),
        "last_seq": head.map(|e| e.seq),
        "head": head.map(|e| &e.hash),
        "problem": outcome.as_ref().err(),
    })
}

/// Checks a whole chain, given oldest first (by `seq`), and names the first break. The
/// oldest event links to `GENESIS`, or to the dropped event a later checkpoint names.
///
/// At each event, in this order: a link to an event stored later is a reordering; an
/// event its successor skips (linking to the one before it) was inserted; fields that
/// no longer give the event's hash were altered; a link to an event that is not there
/// means events were removed.
pub fn verify_chain(events: &[AuditEvent]) -> Result<(), ChainBreak> {
    let anchors: std::collections::HashSet<&str> = events
        .iter()
        .filter_map(AuditEvent::checkpoint_anchor)
        .collect();
    let position: std::collections::HashMap<&str, usize> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.hash.as_str(), i))
        .collect();
    for (i, event) in events.iter().enumerate() {
        let previous = i.checked_sub(1).map(|p| &events[p]);
        if let Some(&p) = position.get(event.prev_hash.as_str())
            && p > i
        {
            return Err(ChainBreak::Reordered {
                seq: event.seq,
                follows_seq: events[p].seq,
            });
        }
        let links_to_previous = |link: &str| match previous {
            Some(previous) => link == previous.hash,
            None => link == GENESIS || anchors.contains(link),
        };
        if let Some(next) = events.get(i + 1)
            && next.prev_hash != event.hash
            && links_to_previous(&next.prev_hash)
        {
            return Err(ChainBreak::Inserted { seq: event.seq });
        }
        if event.computed_hash() != event.hash {
            return Err(ChainBreak::Altered { seq: event.seq });
        }
        if !links_to_previous(&event.prev_hash) {
            return Err(ChainBreak::Removed {
                seq: event.seq,
                after_seq: previous.map(|p| p.seq),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: usize) -> Vec<AuditEvent> {
        let mut events: Vec<AuditEvent> = Vec::new();
        for i in 0..n {
            let prev_hash = events.last().map_or(GENESIS.to_owned(), |e| e.hash.clone());
            let mut e = AuditEvent {
                seq: i as i64 + 1,
                at_ms: 1000 + i as i64,
                actor: "alice".into(),
                key_id: "SHA256:k".into(),
                action: "host.rename".into(),
                outcome: DONE.into(),
                hosts: vec![format!("web-{i}")],
                details: serde_json::json!({"to": format!("web-{i}")}),
                address: "127.0.0.1".into(),
                nonce: format!("n{i}"),
                prev_hash,
                hash: String::new(),
            };
            e.hash = e.computed_hash();
            events.push(e);
        }
        events
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(verify_chain(&chain(5)), Ok(()));
        assert_eq!(verify_chain(&[]), Ok(()));
    }

    #[test]
    fn each_kind_of_tampering_is_named_at_its_event() {
        let mut altered = chain(5);
        altered[2].details = serde_json::json!({"to": "elsewhere"});
        assert_eq!(verify_chain(&altered), Err(ChainBreak::Altered { seq: 3 }));

        let mut removed = chain(5);
        removed.remove(2);
        assert_eq!(
            verify_chain(&removed),
            Err(ChainBreak::Removed {
                seq: 4,
                after_seq: Some(2)
            })
        );

        let mut oldest_removed = chain(5);
        oldest_removed.remove(0);
        assert_eq!(
            verify_chain(&oldest_removed),
            Err(ChainBreak::Removed {
                seq: 2,
                after_seq: None
            })
        );

        // Inserted with a well-formed hash linking to its predecessor, and without.
        for well_formed in [true, false] {
            let mut inserted = chain(5);
            let mut forged = inserted[1].clone();
            forged.seq = 99;
            forged.prev_hash = inserted[1].hash.clone();
            forged.nonce = "forged".into();
            forged.hash = if well_formed {
                forged.computed_hash()
            } else {
                "f".repeat(64)
            };
            inserted.insert(2, forged);
            assert_eq!(
                verify_chain(&inserted),
                Err(ChainBreak::Inserted { seq: 99 })
            );
        }

        let mut reordered = chain(5);
        reordered.swap(1, 2);
        assert_eq!(
            verify_chain(&reordered),
            Err(ChainBreak::Reordered {
                seq: 3,
                follows_seq: 2
            })
        );
    }

    #[test]
    fn a_checkpoint_anchors_the_oldest_kept_event() {
        let mut events = chain(6);
        let dropped = events.drain(..3).collect::<Vec<_>>();
        let last = events.last().map(|e| e.hash.clone()).unwrap_or_default();
        let mut checkpoint = AuditEvent {
            seq: 7,
            at_ms: 2000,
            actor: "yeet-server".into(),
            key_id: String::new(),
            action: CHECKPOINT.into(),
            outcome: DONE.into(),
            hosts: vec![],
            details: serde_json::json!({"last_dropped_hash": dropped[2].hash, "dropped": 3}),
            address: String::new(),
            nonce: String::new(),
            prev_hash: last,
            hash: String::new(),
        };
        checkpoint.hash = checkpoint.computed_hash();
        events.push(checkpoint);
        assert_eq!(verify_chain(&events), Ok(()));
        // Without the checkpoint, the same kept events show a removal.
        events.pop();
        assert!(matches!(
            verify_chain(&events),
            Err(ChainBreak::Removed { seq: 4, .. })
        ));
    }
}
