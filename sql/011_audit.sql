-- The audit trail: who called what, when, with which outcome. Never content, never arguments' values:
-- the target is a tool's name or a resource's URI (URIs carry identifiers only).
CREATE TABLE IF NOT EXISTS audit_log (
  id           BIGSERIAL PRIMARY KEY,
  at           TIMESTAMPTZ NOT NULL DEFAULT now(),
  tenant_id    TEXT NOT NULL,
  agent_id     TEXT NOT NULL,
  agent_type   TEXT NOT NULL,
  token_id     TEXT,
  method       TEXT NOT NULL,
  target       TEXT NOT NULL,
  scope        TEXT,
  outcome      TEXT NOT NULL,
  result_count INTEGER,
  latency_ms   DOUBLE PRECISION NOT NULL,
  transport    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_log_tenant_at ON audit_log (tenant_id, at);
CREATE INDEX IF NOT EXISTS audit_log_at ON audit_log (at);
