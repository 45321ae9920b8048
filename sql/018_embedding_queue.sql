-- Events are acknowledged at commit and embedded afterwards (mcp_shared_memory/embedding_queue.py).
-- embedding_error: why the model refused this event's text (NULL while it is simply waiting); such an
-- event is retried hourly and listed by doctor and reembed. The per-scope index lets a search embed its
-- scope's waiting events before ranking (read-your-writes) without reading the scope.
ALTER TABLE shared_episodic_memories ADD COLUMN IF NOT EXISTS embedding_error TEXT;

CREATE INDEX IF NOT EXISTS idx_shared_ep_pending_scope
  ON shared_episodic_memories (tenant_id, scope_type, scope_id, seq) WHERE embedding IS NULL;
