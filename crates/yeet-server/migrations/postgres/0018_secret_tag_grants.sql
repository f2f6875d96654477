-- Secrets granted to a tag: every host carrying the tag holds the secret while it carries
-- it. The grants are kept as rows of secret_grants (via_tag names the tag that gave one;
-- '' for a direct grant), synchronised in the same transaction as any change to tags or
-- tag grants, so that check-ins, fetches and listings read one table as before.
CREATE TABLE secret_tag_grants (
    secret TEXT NOT NULL,
    tag TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    granted_by TEXT NOT NULL,
    PRIMARY KEY (secret, tag)
);
ALTER TABLE secret_grants ADD COLUMN via_tag TEXT NOT NULL DEFAULT '';
