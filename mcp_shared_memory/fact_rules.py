"""The shared facts of ``SharedMemory``: stored, searched and forgotten within a scope, with the same
access rules as events. A part of ``SharedMemory`` (it inherits this), kept apart for size."""

from __future__ import annotations

import uuid

from . import validation as check
from .embeddings import Embedder
from .errors import InvalidInput, NotFound
from .models import Fact, FactWrite, Principal, Scope, SearchMode, as_uuid
from .stores.facts import FactsStore
from .workspace_rules import WorkspaceRules


class FactRules(WorkspaceRules):
    _embedder: Embedder
    _facts: FactsStore

    async def store_fact(
        self,
        principal: Principal,
        fact: str,
        *,
        scope: str | Scope | None = None,
        source_event_ids: list[uuid.UUID] | None = None,
    ) -> FactWrite:
        """Store a shared fact; a near-duplicate of an existing fact confirms it instead."""
        target = principal.resolve_scope(scope, need="write")
        check.text(fact, "fact", max_chars=check.MAX_FACT_CHARS)
        await self._workspace_access(principal, target, write=True)
        await self._quota.check(principal.tenant)  # facts are not counted, but none is stored past the quota
        fact = self._redactor.text(fact)
        vector = await self._embedder.embed(fact, urgent=True)  # the agent waits for its fact
        return await self._facts.upsert(
            principal.tenant, target, fact, vector, source_event_ids=source_event_ids or [],
            source_agents=[principal.agent_id], duplicate_floor=self.settings.duplicate_floor,
        )  # fmt: skip

    async def search_facts(
        self,
        principal: Principal,
        query: str,
        *,
        scope: str | Scope | None = None,
        top_k: int = 10,
        min_similarity: float | None = None,
        mode: SearchMode = "hybrid",
    ) -> list[Fact]:
        """The scope's shared facts that answer ``query``, best first (modes as in ``search_shared``)."""
        target = principal.resolve_scope(scope)
        check.bounded_int(top_k, "top_k", low=1, high=check.MAX_LIMIT)
        check.text(query, "query", max_chars=check.MAX_QUERY_CHARS)
        mode = check.search_mode(mode)
        floor = self._floor(min_similarity)
        await self._workspace_access(principal, target, write=False)
        return await self._search_facts(principal.tenant, target, query, top_k, floor, mode)

    async def _search_facts(
        self, tenant: str, scope: Scope, query: str, top_k: int, floor: float, mode: SearchMode
    ) -> list[Fact]:
        vector = await self._embedder.embed(query, urgent=True)
        return await self._facts.search(
            tenant, scope, vector, query=query, top_k=top_k, min_similarity=floor, mode=mode
        )

    async def forget_fact(self, principal: Principal, fact_id: str, *, scope: str | Scope | None = None) -> None:
        target = principal.resolve_scope(scope, need="write")
        parsed = as_uuid(fact_id)
        if parsed is None:
            raise InvalidInput(f"invalid fact id {fact_id!r}: expected a UUID")
        await self._workspace_access(principal, target, write=True)
        if not await self._facts.forget(principal.tenant, target, parsed):
            raise NotFound(f"fact {fact_id} does not exist in scope {target}")

    def _floor(self, min_similarity: float | None) -> float:
        """A search's similarity floor: the model's default unless given."""
        if min_similarity is None:
            return self.settings.search_floor
        return check.similarity(min_similarity, "min_similarity")
