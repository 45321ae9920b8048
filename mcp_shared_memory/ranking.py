"""How search results are ranked, as pure rules: the candidates of each ranking (exact vector k-NN and
full-text rank, from ``stores/event_search.py``) fused into one list.

- ``semantic``: by cosine similarity; hits below the similarity floor are dropped.
- ``lexical``: by full-text rank; every event sharing a term with the question is a hit.
- ``hybrid`` (default): reciprocal-rank fusion of both rankings (each list contributes 1 / (k + rank));
  the floor is redefined as "similar enough OR sharing a term": a strong keyword hit (an error code, a
  name) with a low cosine is kept, an unrelated event neither similar nor sharing a term is dropped.

``score`` says where a hit ranks (higher is better); ``similarity`` and ``lexical`` say why.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from .models import Event, SearchMode

RRF_K = 60
Fusion = Literal["rrf", "weighted"]
# Weighted fusion: the share of the (max-normalised) similarity in the score, the rest lexical.
SEMANTIC_WEIGHT = 0.5


def candidates_per_ranking(limit: int) -> int:
    """How deep each ranking is read before fusion: enough that a hit ranked low by one signal and high
    by the other is still seen."""
    return max(3 * limit, 30)


def fuse(
    candidates: Sequence[Event],
    *,
    mode: SearchMode,
    limit: int,
    floor: float,
    fusion: Fusion = "rrf",
    recency_half_life: float | None = None,
    now: datetime | None = None,
) -> list[Event]:
    if mode == "semantic":
        kept = [e for e in candidates if e.similarity is not None and e.similarity >= floor]
        scored = {e.id: float(e.similarity or 0.0) for e in kept}
    elif mode == "lexical":
        kept = [e for e in candidates if (e.lexical or 0.0) > 0]
        scored = {e.id: float(e.lexical or 0.0) for e in kept}
    else:
        kept = [e for e in candidates if (e.lexical or 0.0) > 0 or (e.similarity or -1.0) >= floor]
        scored = _rrf(kept) if fusion == "rrf" else _weighted(kept)
    if recency_half_life:
        reference = now or max((e.created_at for e in kept), default=None)
        if reference is not None:
            for event in kept:
                age = max((reference - event.created_at).total_seconds(), 0.0)
                scored[event.id] *= math.pow(0.5, age / recency_half_life)
    ranked = sorted(kept, key=lambda e: (scored[e.id], e.seq), reverse=True)[:limit]
    return [e.model_copy(update={"score": round(scored[e.id], 6)}) for e in ranked]


def _ranks(events: Sequence[Event], key: str) -> dict[uuid.UUID, int]:
    present = [e for e in events if getattr(e, key) is not None and (key != "lexical" or e.lexical)]
    ordered = sorted(present, key=lambda e: (getattr(e, key), e.seq), reverse=True)
    return {e.id: rank for rank, e in enumerate(ordered, start=1)}


def _rrf(events: Sequence[Event]) -> dict[uuid.UUID, float]:
    by_vector, by_text = _ranks(events, "similarity"), _ranks(events, "lexical")
    return {
        e.id: (1 / (RRF_K + by_vector[e.id]) if e.id in by_vector else 0.0)
        + (1 / (RRF_K + by_text[e.id]) if e.id in by_text else 0.0)
        for e in events
    }


def _weighted(events: Sequence[Event]) -> dict[uuid.UUID, float]:
    top_similarity = max((e.similarity or 0.0 for e in events), default=0.0) or 1.0
    top_lexical = max((e.lexical or 0.0 for e in events), default=0.0) or 1.0
    return {
        e.id: SEMANTIC_WEIGHT * max(e.similarity or 0.0, 0.0) / top_similarity
        + (1 - SEMANTIC_WEIGHT) * (e.lexical or 0.0) / top_lexical
        for e in events
    }
