"""SharedMemory: the domain. Every rule (limits, ACL, dedup, importance floors) lives here, so the
Python API and the MCP tools behave the same."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

import anyio

from . import ranking, recent
from . import validation as check
from .announcer import Announcer
from .context import format_shared_context, task_context
from .embedding_queue import EmbeddingQueue
from .embeddings import Embedder
from .errors import EmbeddingUnavailable
from .event_filter import EventFilter
from .fact_rules import FactRules
from .models import (
    Event,
    EventRef,
    NewEvent,
    Principal,
    Scope,
    SearchHits,
    SearchMode,
    WorkspaceSummary,
    WriteResult,
    as_uuid,
    content_hash,
    validate_event_type,
    validate_identifier,
)
from .redaction import Redactor
from .retraction import retract_event
from .settings import Settings
from .stores.cache import CachedRecent, CacheMiss, RedisCache
from .stores.episodic import PostgresEpisodicStore
from .stores.event_search import PostgresEventSearch
from .stores.facts import FactsStore
from .stores.quota import TenantEventQuota
from .stores.workspaces import PostgresWorkspaceStore
from .vectors import Vector

log = logging.getLogger(__name__)

SHARED_CONTEXT_MAX_EVENTS = 20
SHARED_CONTEXT_MAX_FACTS = 10


class SharedMemory(FactRules):
    """Shared memory of a tenant's agents. Every call takes the caller's ``Principal``."""

    def __init__(
        self,
        *,
        settings: Settings,
        episodic: PostgresEpisodicStore,
        search: PostgresEventSearch,
        workspaces: PostgresWorkspaceStore,
        cache: RedisCache,
        announcer: Announcer,
        embedder: Embedder,
        facts: FactsStore,
        quota: TenantEventQuota,
        embeddings: EmbeddingQueue,
    ) -> None:
        self.settings = settings
        self._episodic = episodic
        self._search = search
        self._workspaces = workspaces
        self._cache = cache
        self._announcer = announcer
        self._embedder = embedder
        self._facts = facts
        self._quota = quota
        self._embeddings = embeddings
        self._redactor = Redactor.from_settings(settings)

    @property
    def model_id(self) -> str:
        return self._embedder.model_id

    # events

    async def write_event(
        self,
        principal: Principal,
        content: str,
        *,
        event_type: str = "observation",
        role: str | None = None,
        importance: float = 0.5,
        metadata: dict[str, Any] | None = None,
        scope: str | Scope | None = None,
        idempotency_key: str | None = None,
        dedup: bool = True,
    ) -> WriteResult:
        """Append an event to the scope's shared log; acknowledged only once PostgreSQL committed it.

        Identical content in the same scope within the dedup window is dropped (``deduplicated``, naming
        the agent whose write was kept);
        a repeated ``idempotency_key`` returns the event stored the first time (``replayed``).
        Secrets (and PII when configured) are redacted first: nothing downstream sees them, and the
        metadata lists the redacted kinds under ``"redacted"``.
        """
        target = principal.resolve_scope(scope, need="write")
        check.text(content, "content", max_chars=self.settings.max_content_chars)
        validate_event_type(event_type)
        role = check.optional_text(role, "role", max_chars=check.MAX_ROLE_CHARS)
        importance = check.unit_interval(importance, "importance")
        metadata = check.metadata(metadata)
        idempotency_key = check.optional_text(
            idempotency_key, "idempotency_key", max_chars=check.MAX_IDEMPOTENCY_KEY_CHARS
        )
        await self._workspace_access(principal, target, write=True)
        await self._quota.check(principal.tenant)
        content, metadata = self._redactor.event(content, metadata)
        digest = content_hash(content)
        tenant = principal.tenant

        claimed = committed = False
        try:
            if idempotency_key is None and dedup and self.settings.dedup_window > 0:
                earlier = await self._cache.claim_dedup(
                    tenant, target, digest, self.settings.dedup_window, agent_id=principal.agent_id
                )
                if earlier is not None:
                    return WriteResult(
                        status="deduplicated", event_id=as_uuid(earlier.event_id) if earlier.event_id else None,
                        original_agent_id=earlier.agent_id,
                    )  # fmt: skip
                claimed = True
            # Acknowledged at commit: the vector is computed afterwards by the embedding queue.
            new = NewEvent(
                agent_id=principal.agent_id, agent_type=principal.agent_type, event_type=event_type, role=role,
                content=content, content_hash=digest, embedding=None, embedding_model=None,
                importance=importance, metadata=metadata, idempotency_key=idempotency_key,
            )  # fmt: skip
            async with self._episodic.writer(tenant, target) as writer:
                assert writer is not None
                # Shielded from cancellation: once the INSERT is sent it may commit, and a committed event
                # must reach the cache and the subscribers. Bounded by the database and Redis timeouts.
                with anyio.CancelScope(shield=True):
                    appended = await writer.append(new)
                    committed = appended.inserted
                    fresh = [appended.event] if appended.inserted else []
                    await self._announcer.events(
                        writer, appended.backlog + fresh, dedup=(appended.event.id, digest) if claimed else None
                    )
        except BaseException:
            if claimed and not committed:
                # Shielded: a cancelled request must still free its claim, or the retry is "deduplicated".
                with anyio.CancelScope(shield=True):
                    await self._cache.release_dedup(tenant, target, digest)
            raise
        if not appended.inserted:
            return WriteResult(status="replayed", event=appended.event, event_id=appended.event.id)
        self._embeddings.notify()
        await self._quota.added(tenant)
        return WriteResult(status="written", event=appended.event, event_id=appended.event.id)

    async def get_recent_shared(
        self,
        principal: Principal,
        *,
        scope: str | Scope | None = None,
        limit: int = 20,
        min_importance: float = 0.0,
        since_seq: int | None = None,
        filters: EventFilter | dict[str, Any] | None = None,
    ) -> list[Event]:
        """The scope's newest events from every agent (newest first); with ``since_seq``, the events
        after that cursor (oldest first) so a reader can page without gaps. ``filters`` narrow them."""
        target = principal.resolve_scope(scope)
        check.bounded_int(limit, "limit", low=1, high=check.MAX_LIMIT)
        min_importance = check.unit_interval(min_importance, "min_importance")
        if since_seq is not None:
            check.bounded_int(since_seq, "since_seq", low=0, high=2**62)
        wanted = EventFilter.parse(filters)
        await self._workspace_access(principal, target, write=False)
        return await self._recent(principal.tenant, target, wanted, limit, min_importance, since_seq)

    async def _recent(
        self, tenant: str, scope: Scope, wanted: EventFilter, limit: int, min_importance: float, since_seq: int | None
    ) -> list[Event]:
        """``get_recent_shared`` once the caller is checked: filtered reads from PostgreSQL, others from the
        cache when it provably holds the answer."""
        if not wanted.is_empty:
            wanted = wanted.model_copy(update={"min_importance": max(wanted.min_importance, min_importance)})
            return await self._search.recent(tenant, scope, wanted, limit=limit, since_seq=since_seq)
        query = recent.RecentQuery(limit=limit, min_importance=min_importance, since_seq=since_seq)
        if recent.cacheable(query, recent_max=self.settings.recent_max):
            answer = await self._recent_from_cache(tenant, scope, query)
            if answer is not None:
                return answer
        return await self._episodic.recent(
            tenant, scope, limit=limit, min_importance=min_importance, since_seq=since_seq
        )

    async def _recent_from_cache(self, tenant: str, scope: Scope, query: recent.RecentQuery) -> list[Event] | None:
        """The answer when the cache provably holds it (refilling a cold cache first); None: ask PostgreSQL."""
        cached = await self._cache.read_recent(tenant, scope, recent.member_range(query))
        if isinstance(cached, CachedRecent):
            return recent.answer(cached.events, cached.floor, query)
        if cached is CacheMiss.UNAVAILABLE:
            return None
        newest = await self._episodic.recent(tenant, scope, limit=self.settings.recent_max)
        floor = recent.refill_floor(newest, recent_max=self.settings.recent_max)
        await self._cache.refill(tenant, scope, newest, floor=floor)
        return recent.answer(newest, floor, query)

    async def search_shared(
        self,
        principal: Principal,
        query: str,
        *,
        scope: str | Scope | None = None,
        limit: int = 10,
        min_similarity: float | None = None,
        mode: SearchMode = "hybrid",
        filters: EventFilter | dict[str, Any] | None = None,
        recency_half_life: float | None = None,
    ) -> SearchHits:
        """Every agent's events in the scope that answer ``query``, best first (see ``ranking.py``):
        ``hybrid`` matches words and meaning, ``lexical`` exact terms (ids, codes, names), ``semantic``
        meaning only. ``recency_half_life`` (seconds) discounts older events.

        Events acknowledged before the search are ranked by meaning too (the scope's events still
        waiting for a vector are embedded first, briefly). Without the model, the search ranks by words
        and says so in ``degraded``."""
        target = principal.resolve_scope(scope)
        check.bounded_int(limit, "limit", low=1, high=check.MAX_LIMIT)
        check.text(query, "query", max_chars=check.MAX_QUERY_CHARS)
        mode = check.search_mode(mode)
        wanted = EventFilter.parse(filters)
        if recency_half_life is not None:
            check.positive(recency_half_life, "recency_half_life")
        floor = self._floor(min_similarity)
        await self._workspace_access(principal, target, write=False)
        degraded: str | None = None
        embedded = False

        async def query_vector() -> Vector | None:
            nonlocal degraded, embedded
            vector, degraded = await self._query_vector(principal.tenant, target, query)
            embedded = vector is not None
            return vector

        vector: Vector | Awaitable[Vector | None] | None = None
        if mode == "semantic":
            vector = await query_vector()
            mode = mode if embedded else "lexical"
        elif mode == "hybrid":
            vector = query_vector()  # embedded while the full-text half runs
        candidates = await self._search.candidates(
            principal.tenant, target, wanted, vector=vector, query=None if mode == "semantic" else query,
            model_id=self._embedder.model_id, per_ranking=ranking.candidates_per_ranking(limit),
        )  # fmt: skip
        if mode == "hybrid" and not embedded:
            mode = "lexical"
        hits = SearchHits(ranking.fuse(
            candidates, mode=mode, limit=limit, floor=floor, fusion=self.settings.search_fusion,
            recency_half_life=recency_half_life,
        ))  # fmt: skip
        hits.degraded = degraded
        return hits

    async def _query_vector(self, tenant: str, scope: Scope, query: str) -> tuple[Vector | None, str | None]:
        """The query's vector, computed while the scope's waiting events are embedded; (None, why) when
        the model is unavailable or does not answer within ``MSM_EMBEDDING_CATCH_UP_SECONDS``."""
        caught_up = asyncio.ensure_future(self._embeddings.catch_up(tenant, scope))
        wait = self.settings.embedding_catch_up_seconds
        try:
            with anyio.fail_after(wait):
                vector = await self._embedder.embed(query, urgent=True)
        except BaseException as exc:
            caught_up.cancel()
            if isinstance(exc, EmbeddingUnavailable):
                return None, "the embedding model is unavailable: ranked by matching words only"
            if isinstance(exc, TimeoutError):
                return None, f"the embedding model did not answer within {wait:g} s: ranked by matching words only"
            raise
        left = (await caught_up).left
        if left:
            return vector, f"{left} events written moments ago are ranked by matching words only (still embedding)"
        return vector, None

    async def get_agent_history(
        self,
        principal: Principal,
        agent_id: str,
        *,
        scope: str | Scope | None = None,
        limit: int = 30,
        filters: EventFilter | dict[str, Any] | None = None,
    ) -> list[Event]:
        """Events one agent wrote in the scope, newest first."""
        target = principal.resolve_scope(scope)
        validate_identifier(agent_id, "agent_id")
        check.bounded_int(limit, "limit", low=1, high=check.MAX_LIMIT)
        wanted = EventFilter.parse(filters).model_copy(update={"agent_ids": [agent_id]})
        await self._workspace_access(principal, target, write=False)
        return await self._search.recent(principal.tenant, target, wanted, limit=limit)

    async def shared_context_events(
        self, principal: Principal, *, scope: str | Scope | None = None, max_events: int = SHARED_CONTEXT_MAX_EVENTS
    ) -> list[Event]:
        """What crosses agent boundaries: recent events at or above the importance floor, capped."""
        return await self.get_recent_shared(
            principal, scope=scope, limit=max_events, min_importance=self.settings.min_shared_importance
        )

    async def get_task_context(
        self,
        principal: Principal,
        *,
        scope: str | Scope | None = None,
        max_events: int = SHARED_CONTEXT_MAX_EVENTS,
        query: str | None = None,
        max_facts: int = SHARED_CONTEXT_MAX_FACTS,
    ) -> str:
        """The text a (sub-)agent injects at task start: the workspace task, the important shared events,
        and the shared facts relevant to ``query`` (default: the workspace task, or the recent events)."""
        target = principal.resolve_scope(scope)
        check.bounded_int(max_events, "max_events", low=1, high=100)
        check.bounded_int(max_facts, "max_facts", low=0, high=100)
        if query is not None:
            check.text(query, "query", max_chars=check.MAX_QUERY_CHARS)
        # One access check for the whole context (the parts below are read without repeating it).
        workspace = await self._workspace_access(principal, target, write=False)
        floor = self.settings.min_shared_importance
        events = await self._recent(principal.tenant, target, EventFilter(), max_events, floor, None)
        query = query or (workspace.task if workspace else " ".join(e.content for e in events[:5]))
        query = query[: check.MAX_QUERY_CHARS]
        facts = (
            await self._search_facts(principal.tenant, target, query, max_facts, self.settings.search_floor, "hybrid")
            if max_facts and query.strip()
            else []
        )
        return task_context(workspace=workspace, user_id=target.id, events=events, facts=facts, max_events=max_events)

    async def publish_result(
        self, principal: Principal, result: str, *, scope: str | Scope | None = None, importance: float = 0.8
    ) -> WriteResult:
        """A sub-agent's output, written back to the shared scope."""
        return await self.write_event(principal, result, event_type="agent_result", importance=importance, scope=scope)

    async def retract_event(
        self, principal: Principal, event_id: str | EventRef, *, scope: str | Scope | None = None
    ) -> Event:
        """Delete an event this agent wrote (any, with the admin role on the scope), named by its id or its seq
        (``#42``, as listings show it); see ``retraction.py``."""
        target = principal.resolve_scope(scope, need="write")
        await self._workspace_access(principal, target, write=False)
        return await retract_event(principal, target, event_id, episodic=self._episodic, announcer=self._announcer)


__all__ = ["SharedMemory", "WorkspaceSummary", "format_shared_context"]
