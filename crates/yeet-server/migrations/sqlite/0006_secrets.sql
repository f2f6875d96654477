-- Secrets (SQLite). Only ciphertext is stored: age files encrypted to the server's
-- recipient, whose identity is a file of its own and never in the database.
CREATE TABLE secrets (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    ciphertext BLOB NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
-- Which host may fetch which secret, and the version it fetched last. host_id follows
-- renames; the rows go with the secret or the host (deleted explicitly, in one transaction).
CREATE TABLE secret_grants (
    secret TEXT NOT NULL,
    host_id BIGINT NOT NULL,
    granted_at BIGINT NOT NULL,
    granted_by TEXT NOT NULL,
    fetched_version BIGINT,
    fetched_at BIGINT,
    PRIMARY KEY (secret, host_id)
);
CREATE INDEX secret_grants_host ON secret_grants (host_id);
-- Every change to a secret, with its author; kept after the secret is removed.
CREATE TABLE secret_changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    secret TEXT NOT NULL,
    at BIGINT NOT NULL,
    author TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX secret_changes_secret ON secret_changes (secret, id);
-- Server-wide facts every replica must agree on, such as the recipient the fleet's secrets
-- are encrypted to.
CREATE TABLE settings (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
