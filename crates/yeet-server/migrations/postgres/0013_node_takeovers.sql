-- Enrollments refused because they claimed the identifier of a node that was still
-- checking in (a takeover attempt, or a reinstalled machine too soon), shown to operators.
ALTER TABLE osquery_nodes ADD COLUMN takeovers_refused BIGINT NOT NULL DEFAULT 0;
ALTER TABLE osquery_nodes ADD COLUMN last_refused_at BIGINT;
