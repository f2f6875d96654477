-- Activation attempts reported by agents, with their gzip-compressed logs (SQLite).
-- host_name is the name at report time; host_id follows renames.
CREATE TABLE activations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id BIGINT NOT NULL,
    host_name TEXT NOT NULL,
    store_path TEXT NOT NULL,
    release_id BIGINT,
    result TEXT NOT NULL,
    reason TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    finished_at BIGINT NOT NULL,
    reboot_required BIGINT NOT NULL,
    log_gzip BLOB NOT NULL
);
CREATE INDEX activations_host ON activations (host_id, id);

-- The newest activation result per host, so that check-ins need no history scan: a system
-- that failed on a host is not offered to it again until a newer release names another.
ALTER TABLE hosts ADD COLUMN last_result TEXT;
ALTER TABLE hosts ADD COLUMN last_result_path TEXT;
