-- Cross-agent episodic log: the durable source of truth. Redis only caches it.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS shared_episodic_memories (
  id              UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  seq             BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,   -- total order and polling cursor
  tenant_id       TEXT NOT NULL,
  scope_type      TEXT NOT NULL CHECK (scope_type IN ('user', 'workspace')),
  scope_id        TEXT NOT NULL,
  agent_id        TEXT NOT NULL,
  agent_type      TEXT NOT NULL,
  event_type      TEXT NOT NULL,
  role            TEXT,
  content         TEXT NOT NULL,
  content_hash    TEXT NOT NULL,
  -- Untyped vector: the dimension follows the configured model (memory_meta guards against mixing).
  -- NULL when the embedding could not be computed at write time; filled in later.
  embedding       vector,
  embedding_model TEXT,
  importance      DOUBLE PRECISION NOT NULL DEFAULT 0.5 CHECK (importance >= 0 AND importance <= 1),
  metadata        JSONB NOT NULL DEFAULT '{}'::jsonb,
  idempotency_key TEXT,
  consolidated    BOOLEAN NOT NULL DEFAULT false,
  consolidated_at TIMESTAMPTZ,
  created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
  CONSTRAINT shared_ep_idempotency UNIQUE (tenant_id, scope_type, scope_id, idempotency_key)
);

-- The article's scope index, ordered by seq (the total order) instead of created_at.
CREATE INDEX IF NOT EXISTS idx_shared_ep_scope
  ON shared_episodic_memories (tenant_id, scope_type, scope_id, seq DESC);

CREATE INDEX IF NOT EXISTS idx_shared_ep_agent
  ON shared_episodic_memories (tenant_id, scope_type, scope_id, agent_id, seq DESC);

CREATE INDEX IF NOT EXISTS idx_shared_ep_unconsolidated
  ON shared_episodic_memories (tenant_id, scope_type, scope_id, consolidated)
  WHERE consolidated = false;

CREATE INDEX IF NOT EXISTS idx_shared_ep_unembedded
  ON shared_episodic_memories (seq) WHERE embedding IS NULL;

-- No HNSW index on embedding, deliberately (the article has one). Every query here is filtered by
-- tenant + scope; with that filter HNSW silently returns fewer rows than match (or, with
-- iterative_scan, is slow/incomplete when the scope holds nothing relevant), and it costs ~80 % of
-- every insert. Exact search over the scope's rows is complete (recall 1.0) and fast
-- (0.3 ms for 100 rows, 12 ms for 10k rows). See docs in the README's performance section.
