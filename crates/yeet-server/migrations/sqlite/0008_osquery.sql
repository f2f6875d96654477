-- osquery remote API (SQLite): enrolled nodes, what operators schedule, what nodes log,
-- distributed query campaigns and file carves.
CREATE TABLE osquery_nodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The node's name for itself; re-enrolling under it replaces the node key.
    host_identifier TEXT NOT NULL UNIQUE,
    -- SHA-256 (hex) of the node key; the key itself is never stored.
    node_key_hash TEXT NOT NULL UNIQUE,
    -- The yeet host this node runs on, when one matched; NULL: unlinked.
    host_id BIGINT,
    hostname TEXT NOT NULL DEFAULT '',
    hardware_uuid TEXT NOT NULL DEFAULT '',
    platform TEXT NOT NULL DEFAULT '',
    os_name TEXT NOT NULL DEFAULT '',
    osquery_version TEXT NOT NULL DEFAULT '',
    enrolled_at BIGINT NOT NULL,
    enrollments BIGINT NOT NULL DEFAULT 1,
    last_seen BIGINT NOT NULL
);
-- One node per yeet host: a second node claiming the same host stays unlinked.
CREATE UNIQUE INDEX osquery_nodes_host ON osquery_nodes (host_id) WHERE host_id IS NOT NULL;

-- The DMI UUID each host's agent reports, which osquery reports as system_info.uuid.
ALTER TABLE hosts ADD COLUMN hardware_uuid TEXT NOT NULL DEFAULT '';
CREATE INDEX hosts_hardware_uuid ON hosts (hardware_uuid);

-- Scheduled queries; pack '' is the top-level schedule. hosts: JSON array of host names or
-- node identifiers, empty for every node.
CREATE TABLE osquery_queries (
    name TEXT PRIMARY KEY,
    pack TEXT NOT NULL DEFAULT '',
    query TEXT NOT NULL,
    interval_secs BIGINT NOT NULL,
    snapshot BIGINT NOT NULL DEFAULT 0,
    platform TEXT NOT NULL DEFAULT '',
    hosts TEXT NOT NULL DEFAULT '[]',
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL
);

-- osqueryd options served in every node's config; value is JSON.
CREATE TABLE osquery_options (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

-- Result and status log lines as the node sent them, kept for the retention period.
CREATE TABLE osquery_logs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id BIGINT NOT NULL,
    kind TEXT NOT NULL,
    -- The scheduled query's name (result lines) or the severity's (status lines).
    name TEXT NOT NULL,
    logged_at BIGINT NOT NULL,
    received_at BIGINT NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX osquery_logs_received ON osquery_logs (received_at);
CREATE INDEX osquery_logs_node ON osquery_logs (node_id, id);
CREATE INDEX osquery_logs_name ON osquery_logs (name, id);

-- Distributed queries: one campaign per `yeet query` (or carve), one target row per node.
CREATE TABLE osquery_campaigns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    query TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    deadline BIGINT NOT NULL
);
CREATE INDEX osquery_campaigns_deadline ON osquery_campaigns (deadline);
CREATE TABLE osquery_targets (
    campaign_id BIGINT NOT NULL,
    node_id BIGINT NOT NULL,
    sent_at BIGINT,
    answered_at BIGINT,
    status BIGINT,
    message TEXT,
    rows TEXT,
    PRIMARY KEY (campaign_id, node_id)
);
CREATE INDEX osquery_targets_unsent ON osquery_targets (node_id) WHERE sent_at IS NULL;

-- File carves: the session osqueryd announced and the blocks it posted.
CREATE TABLE osquery_carves (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL UNIQUE,
    node_id BIGINT NOT NULL,
    campaign_id BIGINT,
    request_id TEXT NOT NULL,
    carve_id TEXT NOT NULL,
    block_count BIGINT NOT NULL,
    block_size BIGINT NOT NULL,
    carve_size BIGINT NOT NULL,
    started_at BIGINT NOT NULL,
    completed_at BIGINT,
    sha256 TEXT
);
CREATE INDEX osquery_carves_node ON osquery_carves (node_id, id);
CREATE TABLE osquery_carve_blocks (
    carve_id BIGINT NOT NULL,
    block_id BIGINT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (carve_id, block_id)
);
