-- Rollback releases are marked, so that a rollback walks back through the systems that
-- ordinary releases gave a host, instead of toggling between a system and its rollback.
-- Releases made before this column existed are recognised by the message every rollback
-- was given.
ALTER TABLE releases ADD COLUMN rollback BIGINT NOT NULL DEFAULT 0;
UPDATE releases SET rollback = 1 WHERE message LIKE 'rollback of %';
