-- The audit log: one row per state-changing action (or refusal), written in the same
-- transaction as the change. Each row carries the hash of the one before it (prev_hash),
-- so that editing, deleting, inserting or reordering rows shows when the chain is
-- verified. Appends are serialised (SQLite's write lock; an advisory lock on PostgreSQL),
-- so that replicas extend one chain. `hosts` holds the names the action was about, space
-- separated, as they were then; audit_hosts holds their ids, for scoped listings.
CREATE TABLE audit_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    key_id TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    hosts TEXT NOT NULL,
    details TEXT NOT NULL,
    address TEXT NOT NULL,
    nonce TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_events_at ON audit_events (at_ms);
CREATE TABLE audit_hosts (
    host_id BIGINT NOT NULL,
    event_id BIGINT NOT NULL,
    PRIMARY KEY (host_id, event_id)
);
