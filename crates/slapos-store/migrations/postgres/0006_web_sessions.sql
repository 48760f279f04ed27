-- Dashboard sessions (PostgreSQL): a login with an API token opens a session
-- whose random id the browser keeps in a cookie. Only the id's SHA-256 is
-- stored, with the hash of the token it came from, so that revoking the
-- token ends its sessions.
CREATE TABLE web_session (
  session_hash TEXT PRIMARY KEY,
  user_id BIGINT NOT NULL REFERENCES "user"(id),
  token_hash TEXT NOT NULL,
  created_at BIGINT NOT NULL,
  expires_at BIGINT NOT NULL
);
CREATE INDEX web_session_expiry ON web_session (expires_at)
