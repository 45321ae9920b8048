-- Committed events whose Redis update (recent cache + pub/sub) failed. A sweeper in every server
-- process re-publishes them, so other processes' caches and subscribers never miss an event for good.
CREATE TABLE IF NOT EXISTS msm_cache_outbox (
  event_id  UUID PRIMARY KEY REFERENCES shared_episodic_memories (id) ON DELETE CASCADE,
  queued_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
