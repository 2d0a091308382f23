-- Bearer tokens of the HTTP API: account tokens (printed once by `users add`) and session
-- tokens (from POST /auth/login). Only SHA-256 hashes are stored; each token has an expiry
-- and can be revoked. The tokens of users.token_sha256 move here as account tokens.
-- The application role is granted SELECT/INSERT/UPDATE on this table by the grants the
-- migration runner gives it on every table (bodycam.db._grant_app_role).
CREATE TABLE api_tokens (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_name text NOT NULL REFERENCES users (name),
    sha256 text NOT NULL UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    kind text NOT NULL CHECK (kind IN ('account', 'session')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    created_by text NOT NULL,
    CHECK (expires_at > created_at)
);
CREATE INDEX api_tokens_user ON api_tokens (user_name) WHERE revoked_at IS NULL;

INSERT INTO api_tokens (user_name, sha256, kind, created_at, expires_at, revoked_at, created_by)
SELECT name, token_sha256, 'account', created_at, now() + interval '365 days', disabled_at,
       created_by
FROM users;

ALTER TABLE users DROP COLUMN token_sha256;
