-- Accounts (SQLite): users, API tokens (stored as SHA-256 hashes), and the
-- owner of instances and supplies (NULL: the proxy's single implicit user,
-- and every row written before this migration).
CREATE TABLE "user" (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL
);
CREATE TABLE api_token (
  id INTEGER PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,
  user_id INTEGER NOT NULL REFERENCES "user"(id),
  label TEXT NOT NULL DEFAULT '',
  created_at INTEGER NOT NULL,
  revoked_at INTEGER
);
CREATE INDEX api_token_user ON api_token (user_id);
ALTER TABLE instance ADD COLUMN user_id INTEGER REFERENCES "user"(id);
ALTER TABLE software_installation ADD COLUMN user_id INTEGER REFERENCES "user"(id);
DROP INDEX instance_title;
CREATE UNIQUE INDEX instance_owner_title ON instance (COALESCE(user_id, 0), tree_id, shared, title) WHERE archived_at IS NULL;
CREATE INDEX instance_user ON instance (user_id, id) WHERE archived_at IS NULL
