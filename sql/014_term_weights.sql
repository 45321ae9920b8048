-- One lexeme as a tsquery that matches exactly it (no parsing, no stemming): how the search's IDF
-- weighting asks the GIN index about each of a question's terms.
CREATE OR REPLACE FUNCTION msm_term(lexeme text) RETURNS tsquery
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
  SELECT ('''' || replace(replace(lexeme, '\', '\\'), '''', '''''') || '''')::tsquery
$$;
