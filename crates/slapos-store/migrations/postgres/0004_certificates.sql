-- Client certificates (PostgreSQL) issued by the master's certificate authority:
-- a node's (bound to a computer reference, which may not be registered yet)
-- or a user's. Looked up by the hex SHA-256 of the certificate's DER on every
-- request, so a revocation takes effect at once.
CREATE TABLE certificate (
  id BIGSERIAL PRIMARY KEY,
  fingerprint TEXT NOT NULL UNIQUE,
  kind TEXT NOT NULL CHECK (kind IN ('computer', 'user')),
  computer_reference TEXT,
  user_id BIGINT REFERENCES "user"(id),
  serial TEXT NOT NULL,
  not_after BIGINT NOT NULL,
  created_at BIGINT NOT NULL,
  revoked_at BIGINT,
  CHECK ((kind = 'computer') = (computer_reference IS NOT NULL)),
  CHECK ((kind = 'user') = (user_id IS NOT NULL))
);
CREATE INDEX certificate_computer ON certificate (computer_reference);
CREATE INDEX certificate_user ON certificate (user_id)
