-- Where a release's systems were built from: the flake's git revision, and whether the
-- tree had uncommitted changes.
ALTER TABLE releases ADD COLUMN revision TEXT;
ALTER TABLE releases ADD COLUMN dirty BIGINT NOT NULL DEFAULT 0;
