-- Tags: labels operators put on hosts, which decide who may act on them. Stored as one
-- space-separated, sorted list (the tag alphabet has no space), matched with
-- ' ' || tags || ' ' LIKE '% tag %'. The tags a host suggests for itself (from its agent's
-- config) are kept apart: they are shown, and become tags only when an operator says so.
ALTER TABLE hosts ADD COLUMN tags TEXT NOT NULL DEFAULT '';
ALTER TABLE hosts ADD COLUMN suggested_tags TEXT NOT NULL DEFAULT '';
ALTER TABLE registrations ADD COLUMN suggested_tags TEXT NOT NULL DEFAULT '';
