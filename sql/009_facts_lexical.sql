-- Lexical search over facts, as over events (008): a trigger keeps msm_lexemes(fact), GIN-indexed.
-- Facts tables are small (one row per distinct fact of a scope), so existing rows are filled here at once
-- rather than in batches after the migration.
ALTER TABLE semantic_facts ADD COLUMN IF NOT EXISTS lexemes tsvector;

CREATE OR REPLACE FUNCTION msm_facts_lexemes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.lexemes := msm_lexemes(NEW.fact);
  RETURN NEW;
END $$;

DROP TRIGGER IF EXISTS msm_facts_lexemes ON semantic_facts;
CREATE TRIGGER msm_facts_lexemes BEFORE INSERT OR UPDATE OF fact ON semantic_facts
FOR EACH ROW EXECUTE FUNCTION msm_facts_lexemes();

UPDATE semantic_facts SET lexemes = msm_lexemes(fact) WHERE lexemes IS NULL;

CREATE INDEX IF NOT EXISTS idx_facts_lexemes ON semantic_facts USING gin (lexemes);
