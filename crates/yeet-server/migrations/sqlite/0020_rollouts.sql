-- Staged rollouts (SQLite; keep in step with ../postgres/0020_rollouts.sql).
-- A release's entry reaches its host only once it is opened: at once for
-- an ordinary release, when its wave opens for a rollout. A host's desired system is its
-- newest opened entry. Entries made before rollouts existed were opened when made.
ALTER TABLE release_hosts ADD COLUMN wave BIGINT;
-- Milliseconds, as activations' reported_at_ms: a report counts for a rollout only when
-- the server received it after it opened the entry.
ALTER TABLE release_hosts ADD COLUMN opened_at_ms BIGINT;
UPDATE release_hosts SET opened_at_ms = 1000 * (SELECT created_at FROM releases WHERE releases.id = release_hosts.release_id);

-- Named policies (their JSON is yeet_proto::rollout::RolloutPolicy).
CREATE TABLE rollout_policies (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);

-- One rollout per release; its id is the release's. The policy is copied in, so that a
-- policy changed later does not change a running rollout. Its times are milliseconds of
-- the server's clock. `step` counts transitions: each
-- is a conditional update on it, so that exactly one replica makes each one.
CREATE TABLE rollouts (
    release_id BIGINT PRIMARY KEY REFERENCES releases (id),
    policy_name TEXT NOT NULL,
    policy TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    wave BIGINT NOT NULL DEFAULT -1,
    wave_opened_at_ms BIGINT,
    bake_started_at_ms BIGINT,
    step BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX rollouts_state ON rollouts (state);

-- When the server recorded an activation report (its clock, not the host's; milliseconds): a rollout
-- counts only results reported after it gave the host the release.
ALTER TABLE activations ADD COLUMN reported_at_ms BIGINT;
UPDATE activations SET reported_at_ms = 1000 * finished_at;

-- The failed systemd units a host last reported (NULL: it does not report them).
ALTER TABLE hosts ADD COLUMN failed_units BIGINT;

-- Maintenance windows (their JSON is yeet_proto::windows::MaintenanceWindow).
CREATE TABLE maintenance_windows (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    updated_by TEXT NOT NULL
);
