-- Each stored osquery log line's size in bytes, so that a listing can stop at a byte budget
-- without reading the lines it will not return.
ALTER TABLE osquery_logs ADD COLUMN bytes BIGINT NOT NULL DEFAULT 0;
UPDATE osquery_logs SET bytes = LENGTH(line);
