-- seq stays unique (an identity column only the database assigns) without an index of its own. That index
-- ordered the whole log by seq, and every read of one scope "newest first, LIMIT n" could walk it: a planner
-- that believes the scope's events are everywhere in the log reads it from the newest end, through every
-- newer event of every other scope, before the first one of a quiet scope (measured: 9.7 ms and 3,566 pages
-- against 0.3 ms and 5 pages through the scope's index, idx_shared_ep_scope, for a 2,000-event scope
-- behind 38,000 newer events). No query needs seq alone: each is scoped, or uses a partial index.
-- Dropping it also spares every write one index update.
ALTER TABLE shared_episodic_memories DROP CONSTRAINT IF EXISTS shared_episodic_memories_seq_key;
