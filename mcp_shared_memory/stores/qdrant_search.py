"""Lexical and hybrid search of the facts collection in Qdrant (semantic search is one plain query, in
``facts_qdrant.py``). The semantics are those of ``stores/facts.py``, which PostgreSQL computes in SQL.

Keyword relevance is Qdrant's own: the query's sparse vector against the facts' term frequencies, weighed
by IDF (the statistics of the collection, across tenants). Both rankings are read in one batch: the exact
dense list (by similarity) and the keyword list (by keyword score), ``FUSION_POOL`` deep at first, and
fused here. They are read deeper (4 times per round) until no fact outside both lists could outrank or tie
the ``top_k``-th hit, so the result is exact, ties included, as in PostgreSQL, which scores the whole scope.
Small scopes settle in the first round; the worst case is a lexical query whose only term is in most of a
large scope's facts at the same frequency (every one of them ties, and is read). Callers translate
Qdrant's errors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from qdrant_client import AsyncQdrantClient, models

from ..models import Fact
from ..vectors import Vector, cosine
from .qdrant_points import DENSE, LEXICAL, to_fact

FUSION_POOL = 100
EXACT = models.SearchParams(exact=True)
MAJORITY = models.ReadConsistencyType.MAJORITY


@dataclass
class Candidate:
    """A fact seen by one ranking or both."""

    point_id: Any
    payload: Mapping[str, Any]
    similarity: float
    lexical: float = 0.0  # 0: no term in common with the query


async def ranked_search(
    client: AsyncQdrantClient,
    collection: str,
    scoped: models.Filter,
    vector: Vector,
    terms: models.SparseVector | None,
    *,
    top_k: int,
    floor: float,
    weight: float,
    lexical_only: bool,
    pool: int = FUSION_POOL,
) -> list[Fact]:
    """The best ``top_k`` facts of ``scoped`` (see stores/facts.py); ``weight``: keyword relevance's share;
    ``pool``: how deep each ranking is read first."""
    limit = max(top_k, pool)
    question = vector.tolist()
    while True:
        requests = [] if lexical_only else [
            models.QueryRequest(query=question, filter=scoped, limit=limit, with_payload=True, params=EXACT)
        ]  # fmt: skip
        if terms is not None:
            requests.append(models.QueryRequest(
                query=terms, using=LEXICAL, filter=scoped, limit=limit, with_payload=True, with_vector=True,
                params=EXACT,
            ))  # fmt: skip
        responses = await client.query_batch_points(collection, requests, consistency=MAJORITY)
        dense = [] if lexical_only else responses[0].points
        keyword = responses[-1].points if terms is not None else []
        found = {p.id: Candidate(p.id, p.payload or {}, p.score) for p in dense}
        for p in keyword:
            if p.id in found:
                found[p.id].lexical = p.score
            else:  # Qdrant stores cosine vectors normalised: the similarity is a dot product
                stored = p.vector.get(DENSE) if isinstance(p.vector, dict) else p.vector
                found[p.id] = Candidate(p.id, p.payload or {}, cosine(question, stored), p.score)
        if terms is not None and len(keyword) == limit:
            await _score_keywords(client, collection, scoped, terms, [c for c in found.values() if not c.lexical])

        best_similarity = dense[0].score if dense else max((c.similarity for c in found.values()), default=0.0)
        best_lexical = keyword[0].score if keyword else 0.0
        hits = _ranked(
            found.values(), weight=weight, best_similarity=best_similarity, best_lexical=best_lexical,
            floor=floor, lexical_only=lexical_only,
        )  # fmt: skip
        # The best score a fact in neither list could have, or None if no such fact can qualify.
        keyword_bound = keyword[-1].score / best_lexical if len(keyword) == limit else 0.0
        outside: float | None = None
        if lexical_only:
            outside = keyword_bound if len(keyword) == limit else None
        elif len(dense) == limit and (keyword_bound > 0 or dense[-1].score >= floor):
            outside = (1 - weight) * _share(dense[-1].score, best_similarity) + weight * keyword_bound
        # Strictly greater: a fact outside with the same score may have the higher similarity (the tie-break).
        if outside is None or (len(hits) >= top_k and hits[top_k - 1][0] > outside):
            return [
                to_fact(c.point_id, c.payload, c.similarity, lexical=c.lexical, score=score)
                for score, c in hits[:top_k]
            ]
        limit *= 4


async def _score_keywords(
    client: AsyncQdrantClient,
    collection: str,
    scoped: models.Filter,
    terms: models.SparseVector,
    dense_only: list[Candidate],
) -> None:
    """Keyword scores of the dense hits beyond a full keyword list (0 for those sharing no term)."""
    if not dense_only:
        return
    only = models.Filter(must=[scoped, models.HasIdCondition(has_id=[c.point_id for c in dense_only])])
    response = await client.query_points(
        collection, query=terms, using=LEXICAL, query_filter=only, limit=len(dense_only), search_params=EXACT,
        consistency=MAJORITY,
    )  # fmt: skip
    scores = {p.id: p.score for p in response.points}
    for c in dense_only:
        c.lexical = scores.get(c.point_id, 0.0)


def _share(value: float, best: float) -> float:
    return max(value, 0.0) / best if best > 0 else 0.0


def _ranked(
    candidates: Iterable[Candidate],
    *,
    weight: float,
    best_similarity: float,
    best_lexical: float,
    floor: float,
    lexical_only: bool,
) -> list[tuple[float, Candidate]]:
    """The candidates that qualify, with their score, best first."""
    hits = [
        ((1 - weight) * _share(c.similarity, best_similarity) + weight * _share(c.lexical, best_lexical), c)
        for c in candidates
        if c.lexical > 0 or (not lexical_only and c.similarity >= floor)
    ]
    hits.sort(key=lambda hit: (-hit[0], -hit[1].similarity, str(hit[1].point_id)))
    return hits
