"""What every semantic-facts backend provides (pgvector here, Qdrant when configured).

Search modes, the same in both backends:

- ``semantic``: the facts nearest to the query vector with ``similarity >= min_similarity``, nearest first;
  ``score`` is the similarity, ``lexical`` is not computed (None).
- ``lexical``: the facts sharing at least one term with the query text (stemmed words, identifiers such as
  ``ERR_4417`` or ``payments-api`` whole), best keyword relevance first; no similarity floor.
- ``hybrid`` (default): ``score = (1 - LEXICAL_WEIGHT) * similarity / best similarity + LEXICAL_WEIGHT *
  lexical / best lexical`` (the best of the scope; a negative similarity counts 0); a fact is kept if
  ``similarity >= min_similarity`` OR it shares a term with the query, so a strong keyword hit with a low
  cosine is not dropped, and an unrelated fact, neither similar nor sharing a term, is.

``lexical`` is the backend's own keyword relevance (PostgreSQL: ``ts_rank`` normalised by length; Qdrant:
the IDF-weighted sparse dot product): comparable within one result, not across backends; 0 for a fact
sharing no term. In ``lexical`` mode ``score`` is ``lexical / best lexical``. Results are exact
and complete within the scope: ``top_k`` facts whenever that many qualify. Ties: higher similarity first.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol

from ..models import Fact, FactWrite, Scope, SearchMode
from ..vectors import Vector

Embed = Callable[[Sequence[str]], Awaitable[list[Vector]]]

# Score fusion (ranking.py's "weighted") rather than reciprocal-rank fusion: an identifier query (ERR_4417
# among ERR_4418, ERR_4471 ...) gives the exact fact a keyword relevance well above its look-alikes while
# their cosines are close; ranks throw that margin away (with k=60, "1st by keywords, 3rd by vector" loses
# to "2nd and 1st"). Measured on 36 questions over 175 facts (150 ERR_4xxx look-alikes) in PostgreSQL,
# top-1 correct: 31 semantic, 34 RRF, 35 this.
LEXICAL_WEIGHT: Final = 0.5


def lexical_weight(mode: SearchMode) -> float:
    """The weight of keyword relevance in ``score`` (``semantic`` does not fuse)."""
    return 1.0 if mode == "lexical" else LEXICAL_WEIGHT


class FactsStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def upsert(
        self,
        tenant: str,
        scope: Scope,
        fact: str,
        vector: Vector,
        *,
        source_event_ids: Sequence[uuid.UUID],
        source_agents: Sequence[str],
        duplicate_floor: float,
    ) -> FactWrite:
        """Store a fact, or confirm the existing one it near-duplicates (similarity >= duplicate_floor)."""
        ...

    async def search(
        self,
        tenant: str,
        scope: Scope,
        vector: Vector,
        *,
        query: str,
        top_k: int,
        min_similarity: float,
        mode: SearchMode = "hybrid",
    ) -> list[Fact]:
        """The scope's facts best matching ``query`` (whose embedding is ``vector``); see the module doc."""
        ...

    async def forget(self, tenant: str, scope: Scope, fact_id: uuid.UUID) -> bool: ...

    async def reembed(self, embed: Embed) -> int:
        """Recompute every fact's vector with ``embed`` (after a model change); returns the count."""
        ...
