-- Accepted nonces keyed by their request's signed time first. Nonces are random, so the
-- old key (key_id, nonce) put every insert on a random page of a large index: a batch of
-- check-ins dirtied a page per row. Time-first, inserts land at the index's end and
-- expiry is a range delete at its start, without a second index. A replay carries the
-- same signed time (it is signed), so it still collides with its original.
CREATE TABLE request_nonces (
    signed_at BIGINT NOT NULL,
    key_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    PRIMARY KEY (signed_at, key_id, nonce)
);
-- Old rows kept only their expiry, signed time + clock_skew_secs + 1; the default skew
-- (300 s) recovers the signed time. Under another skew the copied rows match nothing, and
-- only requests from the last minutes before the upgrade could be replayed, once.
INSERT INTO request_nonces (signed_at, key_id, nonce)
    SELECT expires_at - 301, key_id, nonce FROM nonces;
DROP TABLE nonces;
