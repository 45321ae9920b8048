-- The full-text index keyed by scope and term. Every search is within one scope, but a GIN index of the
-- lexemes alone holds, for each term, every event of every scope that has it: a term common anywhere cost a
-- search all its postings ("fix": 2.2k events of a 100k-event scope, 92k of a 1M-row log, 25 ms to read).
-- scoped_lexemes holds the same terms, each prefixed with a hash of the event's tenant and scope, so the
-- index hands a search only its own scope's postings. A stored column rather than an expression index: under
-- row-level security a condition is used as an index condition only if its function is LEAKPROOF, which
-- tsvector @@ tsquery is where 012 could mark it so, and a function of the scope would not be.
-- A hash collision between two scopes only adds candidates that the search's scope condition then drops.

-- The prefix of a scope's terms: 12 hex digits of the SHA-256 of tenant, scope type and id (48 bits; not md5,
-- which a server in FIPS mode refuses, and this runs in every write's trigger).
CREATE OR REPLACE FUNCTION msm_scope_key(tenant text, scope_type text, scope_id text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
  SELECT left(encode(sha256(convert_to(tenant || chr(31) || scope_type || chr(31) || scope_id, 'UTF8')), 'hex'), 12)
    || ':'
$$;

-- The terms of an event's lexemes, each prefixed with its scope's key, without positions. A lexeme too long
-- to keep its prefix within a tsvector lexeme's limit (2,046 bytes) is left out.
CREATE OR REPLACE FUNCTION msm_scoped_lexemes(scope_key text, lexemes tsvector) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
  SELECT array_to_tsvector(coalesce(array_agg(scope_key || lexeme), '{}'))
  FROM unnest(tsvector_to_array(lexemes)) AS lexeme
  WHERE octet_length(scope_key || lexeme) <= 2046
$$;

-- A question's terms in a scope, OR-ed: what scoped_lexemes is searched with. The question's lexemes go
-- through msm_scoped_lexemes (the same prefix and length rule as an event's) and msm_term (014: each as a
-- tsquery matching exactly it).
CREATE OR REPLACE FUNCTION msm_scoped_query(tenant text, scope_type text, scope_id text, question text)
RETURNS tsquery LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
  SELECT NULLIF(string_agg(msm_term(term)::text, ' | '), '')::tsquery
  FROM unnest(tsvector_to_array(
    msm_scoped_lexemes(msm_scope_key(tenant, scope_type, scope_id), msm_lexemes(question))
  )) AS term
$$;

ALTER TABLE shared_episodic_memories ADD COLUMN IF NOT EXISTS scoped_lexemes tsvector;

CREATE OR REPLACE FUNCTION msm_events_lexemes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.lexemes := msm_lexemes(NEW.content);
  NEW.scoped_lexemes := msm_scoped_lexemes(msm_scope_key(NEW.tenant_id, NEW.scope_type, NEW.scope_id), NEW.lexemes);
  RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS msm_events_lexemes ON shared_episodic_memories;
CREATE TRIGGER msm_events_lexemes
BEFORE INSERT OR UPDATE OF content, tenant_id, scope_type, scope_id ON shared_episodic_memories
FOR EACH ROW EXECUTE FUNCTION msm_events_lexemes();

CREATE INDEX IF NOT EXISTS idx_shared_ep_scoped_lexemes ON shared_episodic_memories USING gin (scoped_lexemes);
-- Events written before this migration are filled in batches afterwards (as in 008: `mcp-shared-memory
-- migrate`, or a server's first maintenance pass). Until then a search finds them through their lexemes,
-- in an index that holds only them and empties as they are filled. Building it rebuilds the index of
-- lexemes dropped below, once, and holds writes meanwhile (5–8 s per million events measured here).
CREATE INDEX IF NOT EXISTS idx_shared_ep_lexemes_unscoped ON shared_episodic_memories USING gin (lexemes)
  WHERE scoped_lexemes IS NULL;
CREATE INDEX IF NOT EXISTS idx_shared_ep_scoped_lexemes_missing ON shared_episodic_memories (seq)
  WHERE scoped_lexemes IS NULL;
DROP INDEX IF EXISTS idx_shared_ep_lexemes;
DROP INDEX IF EXISTS idx_shared_ep_lexemes_missing;
