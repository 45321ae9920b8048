-- A word longer than a tsvector lexeme may be (2,046 bytes) is left out of the identifiers, as
-- to_tsvector leaves it out of the words: array_to_tsvector raised an error for it instead, which failed
-- the write (in the lexeme trigger) or the search (in msm_query) that carried it.
CREATE OR REPLACE FUNCTION msm_identifiers(body text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
  SELECT coalesce(array_agg(token), '{}') FROM unnest(string_to_array(
    regexp_replace(
      regexp_replace(
        regexp_replace(' ' || lower(body) || ' ', '[^a-z0-9_./:@#-]+', ' ', 'g'),
        '[_./:@#-]+(?= )|(?<= )[_./:@#-]+', '', 'g'),
      '(?<= )[a-z]+(?= )', '', 'g'),
    ' ')) AS token
  WHERE token <> '' AND octet_length(token) <= 2046
$$;
