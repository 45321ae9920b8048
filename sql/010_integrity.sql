-- Integrity between agents of one tenant.

-- A fact's confirmations count distinct agents: one agent storing five paraphrases is one confirmation.
UPDATE semantic_facts
SET confirmations = GREATEST(1, (SELECT count(DISTINCT a) FROM unnest(source_agents) AS a))
WHERE confirmations IS DISTINCT FROM GREATEST(1, (SELECT count(DISTINCT a) FROM unnest(source_agents) AS a));

-- Idempotency keys are per agent: another agent can no longer pre-claim a key and have the victim's write
-- replay someone else's event. The name stays, so ON CONFLICT ON CONSTRAINT needs no change of name. The
-- new key is wider than the old one, so every existing row satisfies it.
ALTER TABLE shared_episodic_memories DROP CONSTRAINT IF EXISTS shared_ep_idempotency;
ALTER TABLE shared_episodic_memories
  ADD CONSTRAINT shared_ep_idempotency UNIQUE (tenant_id, scope_type, scope_id, agent_id, idempotency_key);
