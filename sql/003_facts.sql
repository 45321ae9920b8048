-- Shared semantic facts (used when no Qdrant server is configured).
CREATE TABLE IF NOT EXISTS semantic_facts (
  id               UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  tenant_id        TEXT NOT NULL,
  scope_type       TEXT NOT NULL CHECK (scope_type IN ('user', 'workspace')),
  scope_id         TEXT NOT NULL,
  fact             TEXT NOT NULL,
  embedding        vector NOT NULL,
  embedding_model  TEXT NOT NULL,
  source_event_ids UUID[] NOT NULL DEFAULT '{}',
  source_agents    TEXT[] NOT NULL DEFAULT '{}',
  confirmations    INTEGER NOT NULL DEFAULT 1,
  first_seen       TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_seen        TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS idx_facts_scope ON semantic_facts (tenant_id, scope_type, scope_id);

-- Which embedding model the vectors of this database come from.
CREATE TABLE IF NOT EXISTS memory_meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
