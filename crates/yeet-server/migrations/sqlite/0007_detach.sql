-- Detachment (SQLite): what a host may do on its own, and when it ran a locally chosen
-- system with the server's permission.
ALTER TABLE hosts ADD COLUMN allow_detach BIGINT NOT NULL DEFAULT 0;
-- One row per detachment; the open one has no ended_at. Rows outlive the host's
-- detachment as history, and go with the host.
CREATE TABLE detachments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host_id BIGINT NOT NULL,
    since BIGINT NOT NULL,
    requested_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    ended_at BIGINT,
    ended_by TEXT
);
CREATE INDEX detachments_host ON detachments (host_id, id);
-- At most one open detachment per host, also across replicas.
CREATE UNIQUE INDEX detachments_open ON detachments (host_id) WHERE ended_at IS NULL;
