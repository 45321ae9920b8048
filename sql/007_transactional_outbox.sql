-- A transactional outbox: every event is queued in the statement that commits it and leaves the queue
-- once the recent cache and the bus have it. A writer killed between its COMMIT and its Redis update
-- leaves the event queued, and the scope's next writer (or the periodic sweep) publishes it first, so
-- the cache never holds a later event without an earlier one (cursors have no gaps).
ALTER TABLE msm_cache_outbox
  ADD COLUMN IF NOT EXISTS tenant_id TEXT,
  ADD COLUMN IF NOT EXISTS scope_type TEXT,
  ADD COLUMN IF NOT EXISTS scope_id TEXT,
  ADD COLUMN IF NOT EXISTS seq BIGINT;

UPDATE msm_cache_outbox o
SET tenant_id = m.tenant_id, scope_type = m.scope_type, scope_id = m.scope_id, seq = m.seq
FROM shared_episodic_memories m
WHERE m.id = o.event_id AND o.tenant_id IS NULL;

ALTER TABLE msm_cache_outbox
  ALTER COLUMN tenant_id SET NOT NULL,
  ALTER COLUMN scope_type SET NOT NULL,
  ALTER COLUMN scope_id SET NOT NULL,
  ALTER COLUMN seq SET NOT NULL;

CREATE INDEX IF NOT EXISTS idx_cache_outbox_scope ON msm_cache_outbox (tenant_id, scope_type, scope_id, seq);

-- The embedding back-fill claims rows with a lease (commit, embed, write back) instead of holding row
-- locks while the model runs: a claimed or rejected event is not retried before embedding_retry_at.
ALTER TABLE shared_episodic_memories ADD COLUMN IF NOT EXISTS embedding_retry_at TIMESTAMPTZ;
UPDATE shared_episodic_memories SET embedding_retry_at = embedding_failed_at + interval '1 hour'
WHERE embedding_failed_at IS NOT NULL AND embedding IS NULL;
ALTER TABLE shared_episodic_memories DROP COLUMN IF EXISTS embedding_failed_at;
