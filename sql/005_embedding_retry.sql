-- Events whose content the embedder rejected: the back-fill retries them hourly instead of every pass,
-- so one unembeddable event never blocks the others.
ALTER TABLE shared_episodic_memories ADD COLUMN IF NOT EXISTS embedding_failed_at TIMESTAMPTZ;
