-- yeet schema v1 (SQLite). Keep in step with ../postgres/0001_init.sql: the queries are shared.
CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    key_id TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE hosts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    key_id TEXT NOT NULL UNIQUE,
    public_key TEXT NOT NULL,
    approved_at BIGINT NOT NULL,
    approved_by TEXT NOT NULL,
    last_seen BIGINT,
    current_system TEXT,
    booted_system TEXT,
    state TEXT NOT NULL DEFAULT 'standby',
    os TEXT NOT NULL DEFAULT '',
    arch TEXT NOT NULL DEFAULT '',
    agent_version TEXT NOT NULL DEFAULT ''
);

CREATE TABLE registrations (
    key_id TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    hostname_hint TEXT NOT NULL,
    os TEXT NOT NULL,
    arch TEXT NOT NULL,
    agent_version TEXT NOT NULL,
    code TEXT NOT NULL,
    code_expires_at BIGINT NOT NULL,
    -- Milliseconds: eviction under a flood orders registrations within one second.
    first_seen_ms BIGINT NOT NULL,
    last_seen_ms BIGINT NOT NULL
);
CREATE INDEX registrations_code ON registrations (code);
CREATE INDEX registrations_last_seen ON registrations (last_seen_ms);

CREATE TABLE rejected_keys (
    key_id TEXT PRIMARY KEY,
    rejected_at BIGINT NOT NULL,
    rejected_by TEXT NOT NULL
);

CREATE TABLE releases (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    author TEXT NOT NULL,
    message TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- host_name is the name at release time; host_id follows renames. No foreign key on
-- host_id: releases are immutable history and outlive removed hosts.
CREATE TABLE release_hosts (
    release_id BIGINT NOT NULL REFERENCES releases (id),
    host_id BIGINT NOT NULL,
    host_name TEXT NOT NULL,
    store_path TEXT NOT NULL,
    PRIMARY KEY (release_id, host_id)
);
CREATE INDEX release_hosts_host ON release_hosts (host_id, release_id);
