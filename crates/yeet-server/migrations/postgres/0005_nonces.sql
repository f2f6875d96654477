-- Every accepted request's nonce, until its timestamp can no longer pass the skew check:
-- a request is accepted once per fleet, across restarts and replicas.
CREATE TABLE nonces (
    key_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (key_id, nonce)
);
CREATE INDEX nonces_expiry ON nonces (expires_at);
