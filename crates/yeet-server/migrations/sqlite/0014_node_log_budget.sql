-- Each node's stored log bytes (kept with every insert and expiry, so that its budget is
-- checked without summing its rows), and the batches refused for being over budget.
ALTER TABLE osquery_nodes ADD COLUMN log_bytes BIGINT NOT NULL DEFAULT 0;
ALTER TABLE osquery_nodes ADD COLUMN log_refusals BIGINT NOT NULL DEFAULT 0;
ALTER TABLE osquery_nodes ADD COLUMN last_log_refused_at BIGINT;
UPDATE osquery_nodes SET log_bytes = (SELECT COALESCE(SUM(bytes), 0) FROM osquery_logs WHERE osquery_logs.node_id = osquery_nodes.id);
