-- Users managed over the API: a person may have several keys (a laptop, CI), and a user
-- may be scoped by tags (empty: the whole fleet). Keys live in a table of their own, which
-- authentication reads; users.key_id and users.public_key stay as one of the user's current
-- keys (kept so by every key change), so that their UNIQUE constraint never disagrees.
CREATE TABLE user_keys (
    key_id TEXT PRIMARY KEY,
    user_id BIGINT NOT NULL,
    public_key TEXT NOT NULL,
    added_at BIGINT NOT NULL
);
CREATE INDEX user_keys_user ON user_keys (user_id);
INSERT INTO user_keys (key_id, user_id, public_key, added_at)
    SELECT key_id, id, public_key, created_at FROM users;
-- Space-separated, sorted, as hosts.tags.
ALTER TABLE users ADD COLUMN tags TEXT NOT NULL DEFAULT '';
