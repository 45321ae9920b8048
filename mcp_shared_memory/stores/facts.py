"""What every semantic-facts backend provides (pgvector here, Qdrant when configured)."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

import numpy as np

from ..models import Fact, FactWrite, Scope

Embed = Callable[[Sequence[str]], Awaitable[list[np.ndarray]]]


class FactsStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def upsert(
        self,
        tenant: str,
        scope: Scope,
        fact: str,
        vector: np.ndarray,
        *,
        source_event_ids: Sequence[uuid.UUID],
        source_agents: Sequence[str],
        duplicate_floor: float,
    ) -> FactWrite:
        """Store a fact, or confirm the existing one it near-duplicates (similarity >= duplicate_floor)."""
        ...

    async def search(
        self, tenant: str, scope: Scope, vector: np.ndarray, *, top_k: int, min_similarity: float
    ) -> list[Fact]: ...

    async def forget(self, tenant: str, scope: Scope, fact_id: uuid.UUID) -> bool: ...

    async def reembed(self, embed: Embed) -> int:
        """Recompute every fact's vector with ``embed`` (after a model change); returns the count."""
        ...
