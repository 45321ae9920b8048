-- Workspaces are durable: Redis only caches their context.
CREATE TABLE IF NOT EXISTS workspaces (
  tenant_id    TEXT NOT NULL,
  id           TEXT NOT NULL,
  task         TEXT NOT NULL,
  agents       TEXT[] NOT NULL DEFAULT '{}',
  status       TEXT NOT NULL DEFAULT 'active',
  context      JSONB NOT NULL DEFAULT '{}'::jsonb,
  created_by   TEXT NOT NULL,
  created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant_id, id)
);

CREATE INDEX IF NOT EXISTS idx_workspaces_recent ON workspaces (tenant_id, created_at DESC);
