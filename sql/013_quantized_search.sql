-- Large scopes are searched in two passes (stores/quantized.py): a shortlist of the scope's events nearest
-- to the question by Hamming distance between short binary codes of the vectors, read from a covering index
-- without visiting the table, then the exact cosine over that shortlist only. Small scopes keep the exact
-- scan.

-- A vector's code: three bits per dimension, whether the value is above -t, 0 and +t, with t = 0.6745 /
-- sqrt(dimensions) (the quartiles of a coordinate of a random unit vector, so any model's dimension gets
-- its own and no constant is stored per model). The Hamming distance between two codes counts, over every
-- dimension, the thresholds lying between the two values: an L1 distance between the values rounded to
-- four levels. Measured on 100k real MiniLM embeddings, a 240-event shortlist re-ranked exactly finds
-- 0.987 of the exact top 10; pgvector's binary_quantize alone (the sign: one bit) finds 0.915, and needs
-- 960 events for 0.98.
CREATE OR REPLACE FUNCTION msm_embedding_bits(embedding vector) RETURNS bit varying
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
  SELECT binary_quantize(embedding + t) || binary_quantize(embedding) || binary_quantize(embedding - t)
  FROM (SELECT array_fill(0.6745 / sqrt(vector_dims(embedding)), ARRAY[vector_dims(embedding)])::vector AS t) AS s
$$;

-- The codes are a plain column kept by a trigger:
-- - not an expression index: the planner answers from an index alone only when every column a query
--   reads is in it, and INCLUDE takes no expressions, so it computes the expression again on every row of
--   the table (measured: 500 ms for a 100k-event scope, slower than the exact scan it should replace);
-- - not a generated column: adding a stored one rewrites the table under an exclusive lock (see 008);
-- - `bit varying`, not bit(1152): the embedding column has no fixed dimension (it follows the configured
--   model). Codes of one model only are ever compared (the search's embedding_model condition, the model
--   guard in memory_meta), so their lengths always agree, as <~> requires.
ALTER TABLE shared_episodic_memories ADD COLUMN IF NOT EXISTS embedding_bits bit varying;

CREATE OR REPLACE FUNCTION msm_events_embedding_bits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.embedding_bits := msm_embedding_bits(NEW.embedding);
  RETURN NEW;
END $$;

-- Every way an embedding is written (insert, COPY, the back-fill, re-embedding) goes through here.
DROP TRIGGER IF EXISTS msm_events_embedding_bits ON shared_episodic_memories;
CREATE TRIGGER msm_events_embedding_bits BEFORE INSERT OR UPDATE OF embedding ON shared_episodic_memories
FOR EACH ROW EXECUTE FUNCTION msm_events_embedding_bits();

-- The events written before this migration, in one statement (measured on 2 cores: about 20 s per 100k
-- events, once); the index comes after, built once rather than updated row by row.
UPDATE shared_episodic_memories SET embedding_bits = msm_embedding_bits(embedding)
WHERE embedding IS NOT NULL AND embedding_bits IS NULL;

-- The first pass reads a scope's entries, which are contiguous here, and nothing else: an index-only scan
-- (id for the re-rank, the code for the distance). The model is a key so that other models' rows are
-- skipped by the index condition rather than filtered one by one. The keys are collated "C" (equality is
-- the same, byte for byte) and the first pass states its conditions with COLLATE "C", which no other index
-- matches: this index is then the planner's only choice. Otherwise the choice rests on its estimate of the
-- scope's size, which is wrong (it takes tenant, scope type and id for independent: one row), and under a
-- generic plan it read the table through the idempotency index instead, 3-5x slower.
CREATE INDEX IF NOT EXISTS idx_shared_ep_scope_bits ON shared_episodic_memories
  (tenant_id COLLATE "C", scope_type COLLATE "C", scope_id COLLATE "C", embedding_model COLLATE "C")
  INCLUDE (id, embedding_bits) WHERE embedding_bits IS NOT NULL;

-- An index-only scan visits the table for every entry whose page is not yet marked all-visible, which
-- only VACUUM does: 20k such rows in a 100k-event scope took the first pass from 20 to 37 ms. Autovacuum's
-- default waits for inserts of 20 % of the table (200k rows at 1M); 1 % keeps the unmarked tail short, and a
-- vacuum after inserts only reads the pages not yet marked.
ALTER TABLE shared_episodic_memories SET (autovacuum_vacuum_insert_scale_factor = 0.01);
