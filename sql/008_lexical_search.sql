-- Lexical search: PostgreSQL keeps a tsvector of every event's content (a trigger: no Python on the
-- write path), GIN-indexed. Ordinary words are stemmed (english); identifiers are also kept whole, so
-- ERR_4417, payments-api, v2.3.1, src/app/main.py and JIRA-1234 match exactly.

-- english, except that hyphenated words, file paths, host names, URLs and versions are kept whole and
-- unstemmed (payments-apis must not become payments-api); their parts are still indexed, stemmed.
DO $$ BEGIN
  CREATE TEXT SEARCH CONFIGURATION msm_english (COPY = english);
EXCEPTION WHEN unique_violation THEN NULL;
END $$;
ALTER TEXT SEARCH CONFIGURATION msm_english
  ALTER MAPPING FOR asciihword, hword, numhword, file, host, url, url_path, version, email WITH simple;

-- The identifiers of a text: lower-cased tokens of letters, digits and _ . / : @ # - that contain a digit
-- or an inner separator (plain words are left to the stemmed part), trailing punctuation removed.
CREATE OR REPLACE FUNCTION msm_identifiers(body text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
  SELECT array_remove(string_to_array(
    regexp_replace(
      regexp_replace(
        regexp_replace(' ' || lower(body) || ' ', '[^a-z0-9_./:@#-]+', ' ', 'g'),
        '[_./:@#-]+(?= )|(?<= )[_./:@#-]+', '', 'g'),
      '(?<= )[a-z]+(?= )', '', 'g'),
    ' '), '')
$$;

CREATE OR REPLACE FUNCTION msm_lexemes(body text) RETURNS tsvector
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
  SELECT to_tsvector('msm_english'::regconfig, body) || array_to_tsvector(msm_identifiers(body))
$$;

-- A question's terms combined with OR (AND, as plainto_tsquery builds it, matches nothing for most
-- natural questions); the ranking decides. NULL when the text has no searchable term.
CREATE OR REPLACE FUNCTION msm_query(question text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
  SELECT NULLIF(string_agg(DISTINCT '''' || replace(lexeme, '''', '''''') || '''', ' | '), '')::tsquery
  FROM unnest(tsvector_to_array(msm_lexemes(question))) AS lexeme
$$;

-- A plain column kept by a trigger rather than a generated column: adding a generated column rewrites the
-- whole table under an exclusive lock, where this one is filled for existing rows in batches after the
-- migration (`mcp-shared-memory migrate`, or a server's first maintenance pass), with progress in the log.
ALTER TABLE shared_episodic_memories ADD COLUMN IF NOT EXISTS lexemes tsvector;

CREATE OR REPLACE FUNCTION msm_events_lexemes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.lexemes := msm_lexemes(NEW.content);
  RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS msm_events_lexemes ON shared_episodic_memories;
CREATE TRIGGER msm_events_lexemes BEFORE INSERT OR UPDATE OF content ON shared_episodic_memories
FOR EACH ROW EXECUTE FUNCTION msm_events_lexemes();

CREATE INDEX IF NOT EXISTS idx_shared_ep_lexemes ON shared_episodic_memories USING gin (lexemes);
-- Rows still to fill (only those that existed before this migration).
CREATE INDEX IF NOT EXISTS idx_shared_ep_lexemes_missing ON shared_episodic_memories (seq) WHERE lexemes IS NULL;
