"""The full-text half of search: which events share the question's terms, and how much that says.

With the default rank (``idf``) a term weighs its inverse document frequency among the scope's events
that share any of the question's terms (BM25's IDF, with binary term frequency and no length
normalisation: agents' notes are short, and both measured worse on the retrieval benchmark). So an error
code or a name that few events mention counts far more than "deploy", or than the name of a speaker
present in every turn. An event's lexical score is the sum of the weights of the question's terms it
holds. The weights are counted in the same statement, over the rows the GIN index finds: exact, never
stale, and no more reading than an unweighted rank.

``ts_rank`` (``MSM_SEARCH_LEXICAL_RANK=ts_rank``) is the unweighted alternative: PostgreSQL's rank of the
OR-ed terms, normalised by length.
"""

from __future__ import annotations

# A question's first MAX_TERMS distinct terms count (in the index's order); the statements have a slot
# for each, so the SQL stays constant.
MAX_TERMS = 16
# The scope's size, counted up to this many events (returned with the candidates: see event_search.py).
SCOPE_SIZE_CAP = 5000
_SLOTS = range(1, MAX_TERMS + 1)
_TERMS = ", ".join(f"tqs[{i}] AS t{i}" for i in _SLOTS)
# Which of the question's terms an event holds, as bit i - 1 of an integer: each term is looked up once per
# matching event, and the counts and scores read that integer. Kept as the tsvector, every term was looked up
# twice, and the 24k matching events of a 100k-event scope spilled the CTE to disk.


def idf_hits(lexemes: str) -> str:
    """Which of the question's terms the tsvector ``lexemes`` holds: term i as bit i - 1."""
    return " | ".join(f"CASE WHEN {lexemes} @@ q.t{i} THEN {1 << (i - 1)} ELSE 0 END" for i in _SLOTS)


_HITS = idf_hits("lexemes")
_COUNTS = ",\n    ".join(f"count(*) FILTER (WHERE hits & {1 << (i - 1)} <> 0) AS df{i}" for i in _SLOTS)
_WEIGHTS = ",\n  ".join(f"ln(1 + (n - df{i} + 0.5::float8) / (df{i} + 0.5::float8)) AS w{i}" for i in _SLOTS)


def idf_score_of_hits(hits: str) -> str:
    """The same score from ``hits`` (a column of ``matched``: the terms an event holds, one bit each)."""
    return " + ".join(f"CASE WHEN {hits} & {1 << (i - 1)} <> 0 THEN w.w{i} ELSE 0::float8 END" for i in _SLOTS)


# Each term's weight as an array (w1 first), for ``score_of_hits``.
WEIGHTS = "ARRAY[" + ", ".join(f"w.w{i}" for i in _SLOTS) + "]"


def score_of_hits(hits: int, weights: list[float]) -> float:
    """``idf_score_of_hits`` in Python, adding in the statement's order so the result is the same double."""
    score = 0.0
    for i, weight in enumerate(weights):
        score += weight if hits & (1 << i) else 0.0
    return score


def question_queries(question: str) -> str:
    """The FROM items ``question`` (the parameter holding the question's text; $1-$3 the tenant and scope)
    and ``scoped_question``: its terms OR-ed, plain and prefixed with the scope's key. Functions in FROM are
    evaluated once, where a scalar subquery was re-evaluated for every row under a generic plan."""
    return f"msm_query({question}) AS question(tsq), msm_scoped_query($1, $2, $3, {question}) AS scoped_question(tsq)"


# The events holding any of the question's terms (over ``question_queries``): found in the index of the
# scope's own terms (scoped_lexemes, sql/020), or, for an event written before it and not filled yet, in the
# index of those events' lexemes alone.
MATCHING = "(scoped_lexemes @@ scoped_question.tsq OR (scoped_lexemes IS NULL AND lexemes @@ question.tsq))"


def question_terms(question: str) -> str:
    """The common table expression ``q``: the question's first terms, each (``t1``...) and OR-ed."""
    return f"""
q AS MATERIALIZED (
  SELECT {_TERMS} FROM (
    SELECT array_agg(msm_term(term) ORDER BY term) AS tqs
    FROM (
      SELECT term FROM unnest(tsvector_to_array(msm_lexemes({question}))) AS term ORDER BY term LIMIT {MAX_TERMS}
    ) AS first_terms
  ) AS terms
)"""


def idf_statements(scope_and_filter: str, question: str) -> str:
    """The common table expressions ``q`` (the question's terms, each and OR-ed), ``matched`` (the
    events holding any, within ``scope_and_filter``, with the terms each holds) and ``w`` (each term's
    weight); ``question`` is the parameter holding the question's text."""
    return f"""{question_terms(question)},
matched AS MATERIALIZED (
  SELECT id, seq, {_HITS} AS hits
  FROM shared_episodic_memories, {question_queries(question)}, q
  WHERE {scope_and_filter} AND question.tsq IS NOT NULL AND {MATCHING}
),
counts AS MATERIALIZED (
  SELECT greatest(count(*), (SELECT count(*) FROM (
    SELECT 1 FROM shared_episodic_memories WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3
    LIMIT {SCOPE_SIZE_CAP}) AS capped)) AS n,
    {_COUNTS}
  FROM matched
),
w AS MATERIALIZED (SELECT
  {_WEIGHTS}
  FROM counts)"""
