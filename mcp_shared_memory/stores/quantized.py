"""The vector ranking of a large scope in two passes: a shortlist by Hamming distance between binary codes of
the vectors (three bits per dimension, ``msm_embedding_bits`` in sql/013, kept in ``embedding_bits``), read
from a covering index without visiting the table, then the exact cosine of the shortlisted events only.

An exact scan reads every row of the scope (a 100k-event scope in 1M rows: 460 ms in the bench); the first
pass reads one contiguous stretch of an index, 144 bytes of code per event (384 dimensions), and both passes
take 21 ms. Re-ranking ``SHORTLIST_PER_CANDIDATE`` times as many events as the ranking returns keeps recall@10
against the exact scan at or above 0.98 on real MiniLM embeddings (``python -m bench --only large``). Scopes
of at most ``quantize_above`` events keep the exact scan: the choice is made inside the statement, so it
costs no round trip and no estimate.
"""

from __future__ import annotations

import re

# How many events the first pass keeps for each candidate the vector ranking returns.
SHORTLIST_PER_CANDIDATE = 12

# $L: the threshold, $S: the shortlist's length (numbered after the search's own parameters).
#
# The scope's size is counted in its index up to L + 1 entries: bounded work, where the planner's estimates
# of a scope's size are wrong (it takes tenant, scope type and id for independent). Each branch is gated by a
# condition computed once (a one-time filter), so the other never runs. The question's code comes from a
# scalar subquery, computed once, where a call in ORDER BY runs for every row under a generic plan. Without
# a filter the shortlist is an index-only scan of the codes' index, whose "C"-collated keys only conditions
# stated with COLLATE "C" match (sql/013): the plan does not rest on the estimate of the scope's size. With
# a filter, whose columns are not in that index, it reads the table's rows, and still filters before the
# limit: the result stays complete. The re-rank reads the shortlist as an array of ids, which only the
# primary key serves (a scope condition there let a generic plan scan the whole scope instead).
TWO_PASS = """scope_size AS MATERIALIZED (
  SELECT count(*) > $L AS large FROM (
    SELECT FROM shared_episodic_memories WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 LIMIT $L + 1
  ) AS capped
),
exact AS (SELECT id, distance FROM ({exact}) AS v WHERE NOT (SELECT large FROM scope_size)),
shortlist AS ({shortlist}),
vec AS (
  SELECT id, distance FROM exact
  UNION ALL (
    SELECT id, embedding <=> $11 AS distance FROM shared_episodic_memories
    WHERE id = ANY(ARRAY(SELECT id FROM shortlist))
    ORDER BY distance LIMIT $13
  )
),"""
QUESTION_CODE = "(SELECT msm_embedding_bits($11::vector))"
SHORTLIST = f"""
SELECT id FROM shared_episodic_memories
WHERE tenant_id = $1 COLLATE "C" AND scope_type = $2 COLLATE "C" AND scope_id = $3 COLLATE "C"
  AND embedding_model = $12 COLLATE "C" AND embedding_bits IS NOT NULL AND (SELECT large FROM scope_size)
ORDER BY embedding_bits <~> {QUESTION_CODE} LIMIT $S
"""
SHORTLIST_FILTERED = f"""
SELECT id FROM shared_episodic_memories
WHERE {{scope_and_filter}} AND embedding_model = $12 AND embedding_bits IS NOT NULL AND (SELECT large FROM scope_size)
ORDER BY embedding_bits <~> {QUESTION_CODE} LIMIT $S
"""


def with_two_pass(search: str, *, exact: str, scope_and_filter: str, filtered: bool) -> str:
    """``search`` (a statement whose CTE ``vec`` is ``exact``: $11 the vector, $12 the model, $13 the
    ranking's length) with two passes in large scopes; the threshold and the shortlist's length are its
    next two parameters, so the caller passes them after all of ``search``'s own."""
    plain = f"vec AS ({exact}),"
    if search.count(plain) != 1:
        raise ValueError("the search statement has no vector candidates to replace")
    first = max(int(n) for n in re.findall(r"\$(\d+)", search)) + 1
    shortlist = SHORTLIST_FILTERED.format(scope_and_filter=scope_and_filter) if filtered else SHORTLIST
    two_pass = TWO_PASS.format(exact=exact, shortlist=shortlist)
    two_pass = two_pass.replace("$L", f"${first}::int").replace("$S", f"${first + 1}::int")
    return search.replace(plain, two_pass)


def shortlist_length(per_ranking: int) -> int:
    return SHORTLIST_PER_CANDIDATE * per_ranking
