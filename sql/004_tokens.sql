-- Bearer tokens for the HTTP transport. Only a SHA-256 of the token is stored.
CREATE TABLE IF NOT EXISTS api_tokens (
  id             TEXT PRIMARY KEY,
  token_sha256   TEXT NOT NULL UNIQUE,
  tenant_id      TEXT NOT NULL,
  agent_id       TEXT NOT NULL,
  agent_type     TEXT NOT NULL DEFAULT 'agent',
  allowed_scopes TEXT[] NOT NULL,
  default_scope  TEXT,
  description    TEXT NOT NULL DEFAULT '',
  created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
  expires_at     TIMESTAMPTZ,
  revoked_at     TIMESTAMPTZ
);
