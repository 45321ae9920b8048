"""SharedMemory: the domain. Every rule (limits, ACL, dedup, importance floors) lives here, so the
Python API and the MCP tools behave the same."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import anyio
import numpy as np

from . import recent
from . import validation as check
from .announcer import Announcer
from .context import format_shared_context, task_context
from .embeddings import Embedder
from .errors import AccessDenied, EmbeddingUnavailable, InvalidInput, NotFound
from .models import (
    Event,
    Fact,
    FactWrite,
    NewEvent,
    Principal,
    Scope,
    Workspace,
    WorkspaceSummary,
    WriteResult,
    as_uuid,
    content_hash,
    validate_event_type,
    validate_identifier,
)
from .settings import Settings
from .stores.cache import CachedRecent, CacheMiss, RedisCache
from .stores.episodic import PostgresEpisodicStore
from .stores.facts import FactsStore
from .stores.workspaces import PostgresWorkspaceStore

log = logging.getLogger(__name__)

MAX_LIMIT = check.MAX_LIMIT
SHARED_CONTEXT_MAX_EVENTS = 20
SHARED_CONTEXT_MAX_FACTS = 10


class SharedMemory:
    """Shared memory of a tenant's agents. Every call takes the caller's ``Principal``."""

    def __init__(
        self,
        *,
        settings: Settings,
        episodic: PostgresEpisodicStore,
        workspaces: PostgresWorkspaceStore,
        cache: RedisCache,
        announcer: Announcer,
        embedder: Embedder,
        facts: FactsStore,
    ) -> None:
        self.settings = settings
        self._episodic = episodic
        self._workspaces = workspaces
        self._cache = cache
        self._announcer = announcer
        self._embedder = embedder
        self._facts = facts

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

        Identical content in the same scope within the dedup window is dropped (``deduplicated``);
        a repeated ``idempotency_key`` returns the event stored the first time (``replayed``).
        """
        target = principal.resolve_scope(scope)
        check.text(content, "content", max_chars=self.settings.max_content_chars)
        validate_event_type(event_type)
        role = check.optional_text(role, "role", max_chars=check.MAX_ROLE_CHARS)
        importance = check.unit_interval(importance, "importance")
        metadata = check.metadata(metadata)
        idempotency_key = check.optional_text(
            idempotency_key, "idempotency_key", max_chars=check.MAX_IDEMPOTENCY_KEY_CHARS
        )
        digest = content_hash(content)
        tenant = principal.tenant

        claimed = committed = False
        # The embedding starts at once; the dedup check runs meanwhile (and drops it for a duplicate).
        embedding = asyncio.ensure_future(self._embed_or_none(content))
        try:
            if idempotency_key is None and dedup and self.settings.dedup_window > 0:
                earlier = await self._cache.claim_dedup(tenant, target, digest, self.settings.dedup_window)
                if earlier is not None:
                    embedding.cancel()
                    return WriteResult(status="deduplicated", event_id=as_uuid(earlier))
                claimed = True
            vector = await embedding
            new = NewEvent(
                agent_id=principal.agent_id, agent_type=principal.agent_type, event_type=event_type, role=role,
                content=content, content_hash=digest, embedding=vector, embedding_model=self._embedder.model_id,
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
            embedding.cancel()
            if claimed and not committed:
                # Shielded: a cancelled request must still free its claim, or the retry is "deduplicated".
                with anyio.CancelScope(shield=True):
                    await self._cache.release_dedup(tenant, target, digest)
            raise
        if not appended.inserted:
            return WriteResult(status="replayed", event=appended.event, event_id=appended.event.id)
        return WriteResult(status="written", event=appended.event, event_id=appended.event.id)

    async def _embed_or_none(self, content: str) -> np.ndarray | None:
        try:
            return await self._embedder.embed(content)
        except EmbeddingUnavailable as exc:
            # The event is stored without a vector and embedded later (embed_missing); losing the
            # write because the embedder hiccuped would be worse than a late search hit.
            log.warning("storing event without embedding: %s", exc)
            return None

    async def get_recent_shared(
        self,
        principal: Principal,
        *,
        scope: str | Scope | None = None,
        limit: int = 20,
        min_importance: float = 0.0,
        since_seq: int | None = None,
    ) -> list[Event]:
        """The scope's newest events from every agent (newest first); with ``since_seq``, the events
        after that cursor (oldest first) so a reader can page without gaps."""
        target = principal.resolve_scope(scope)
        check.bounded_int(limit, "limit", low=1, high=MAX_LIMIT)
        min_importance = check.unit_interval(min_importance, "min_importance")
        if since_seq is not None:
            check.bounded_int(since_seq, "since_seq", low=0, high=2**62)
        query = recent.RecentQuery(limit=limit, min_importance=min_importance, since_seq=since_seq)
        if recent.cacheable(query, recent_max=self.settings.recent_max):
            answer = await self._recent_from_cache(principal.tenant, target, query)
            if answer is not None:
                return answer
        return await self._episodic.recent(
            principal.tenant, target, limit=limit, min_importance=min_importance, since_seq=since_seq
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
    ) -> list[Event]:
        """Semantic search over every agent's events in the scope, most similar first."""
        target = principal.resolve_scope(scope)
        check.bounded_int(limit, "limit", low=1, high=MAX_LIMIT)
        vector, floor = await self._query(query, min_similarity)
        return await self._episodic.search(
            principal.tenant, target, vector, model_id=self._embedder.model_id, limit=limit, min_similarity=floor
        )

    async def _query(self, query: str, min_similarity: float | None) -> tuple[np.ndarray, float]:
        """A search's query vector and similarity floor (the model's default unless given)."""
        check.text(query, "query", max_chars=check.MAX_QUERY_CHARS)
        floor = self.settings.search_floor
        if min_similarity is not None:
            floor = check.similarity(min_similarity, "min_similarity")
        return await self._embedder.embed(query), floor

    async def get_agent_history(
        self, principal: Principal, agent_id: str, *, scope: str | Scope | None = None, limit: int = 30
    ) -> list[Event]:
        """Events one agent wrote in the scope, newest first."""
        target = principal.resolve_scope(scope)
        validate_identifier(agent_id, "agent_id")
        check.bounded_int(limit, "limit", low=1, high=MAX_LIMIT)
        return await self._episodic.agent_history(principal.tenant, target, agent_id, limit=limit)

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
        workspace = await self.get_workspace(principal, target.id) if target.type == "workspace" else None
        events = await self.shared_context_events(principal, scope=target, max_events=max_events)
        query = query or (workspace.task if workspace else " ".join(e.content for e in events[:5]))
        query = query[: check.MAX_QUERY_CHARS]
        facts = (
            await self.search_facts(principal, query, scope=target, top_k=max_facts)
            if max_facts and query.strip()
            else []
        )
        return task_context(workspace=workspace, user_id=target.id, events=events, facts=facts, max_events=max_events)

    async def publish_result(
        self, principal: Principal, result: str, *, scope: str | Scope | None = None, importance: float = 0.8
    ) -> WriteResult:
        """A sub-agent's output, written back to the shared scope."""
        return await self.write_event(principal, result, event_type="agent_result", importance=importance, scope=scope)

    # workspaces

    async def create_workspace(
        self,
        principal: Principal,
        task: str,
        agents: list[str] | None = None,
        *,
        context: dict[str, Any] | None = None,
    ) -> Workspace:
        """Create a durable workspace (orchestrator) and record a ``workspace_created`` event in it."""
        check.text(task, "task", max_chars=check.MAX_TASK_CHARS)
        roster = list(dict.fromkeys(agents or []))
        if len(roster) > check.MAX_AGENTS:
            raise InvalidInput(f"at most {check.MAX_AGENTS} agents per workspace")
        for agent in roster:
            validate_identifier(agent, "agent id in agents")
        context = check.metadata(context)
        workspace_id = str(uuid.uuid4())
        scope = Scope("workspace", workspace_id)
        if not principal.may_use(scope):
            raise AccessDenied("this connection may not create workspaces (its allowed scopes exclude them)")
        workspace = await self._workspaces.create(
            principal.tenant, workspace_id, task=task, agents=roster, context=context,
            created_by=principal.agent_id,
        )  # fmt: skip
        await self._announcer.workspace(principal.tenant, workspace, created=True)
        roster_text = f" Agents: {', '.join(roster)}." if roster else ""
        await self.write_event(
            principal, f"Workspace created for task: {task}.{roster_text}", event_type="workspace_created",
            importance=0.9, scope=scope, dedup=False,
        )  # fmt: skip
        return workspace

    async def get_workspace(self, principal: Principal, workspace_id: str) -> Workspace:
        validate_identifier(workspace_id, "workspace_id")
        principal.resolve_scope(Scope("workspace", workspace_id))
        cached = await self._cache.get_workspace(principal.tenant, workspace_id)
        if cached is not None:
            return cached
        workspace = await self._workspaces.get(principal.tenant, workspace_id)
        if workspace is None:
            raise NotFound(f"workspace {workspace_id} does not exist in this tenant")
        await self._cache.put_workspace(principal.tenant, workspace, ttl=self.settings.workspace_cache_ttl)
        return workspace

    async def get_workspace_summary(
        self, principal: Principal, workspace_id: str, *, limit: int = 50
    ) -> WorkspaceSummary:
        workspace = await self.get_workspace(principal, workspace_id)
        scope = Scope("workspace", workspace_id)
        recent = await self.get_recent_shared(principal, scope=scope, limit=limit)
        count = await self._episodic.count(principal.tenant, scope)
        return WorkspaceSummary(workspace=workspace, recent_events=recent, event_count=count)

    async def update_workspace(
        self,
        principal: Principal,
        workspace_id: str,
        *,
        status: str | None = None,
        context: dict[str, Any] | None = None,
        agents: list[str] | None = None,
    ) -> Workspace:
        """Change status, merge keys into the context, or replace the agent roster."""
        validate_identifier(workspace_id, "workspace_id")
        principal.resolve_scope(Scope("workspace", workspace_id))
        if status is None and context is None and agents is None:
            raise InvalidInput("nothing to update: pass status, context or agents")
        if status is not None:
            check.status(status)
        if context is not None:
            check.metadata(context)
        if agents is not None:
            for agent in agents:
                validate_identifier(agent, "agent id in agents")
        workspace = await self._workspaces.update(
            principal.tenant, workspace_id, status=status, context_patch=context, agents=agents
        )
        if workspace is None:
            raise NotFound(f"workspace {workspace_id} does not exist in this tenant")
        await self._announcer.workspace(principal.tenant, workspace, created=False)
        return workspace

    async def list_workspaces(
        self, principal: Principal, *, status: str | None = None, limit: int = 50
    ) -> list[Workspace]:
        if status is not None:
            check.status(status)
        check.bounded_int(limit, "limit", low=1, high=MAX_LIMIT)
        found = await self._workspaces.list(principal.tenant, status=status, limit=limit)
        return [w for w in found if principal.may_use(Scope("workspace", w.id))]

    # facts

    async def store_fact(
        self,
        principal: Principal,
        fact: str,
        *,
        scope: str | Scope | None = None,
        source_event_ids: list[uuid.UUID] | None = None,
    ) -> FactWrite:
        """Store a shared fact; a near-duplicate of an existing fact confirms it instead."""
        target = principal.resolve_scope(scope)
        check.text(fact, "fact", max_chars=check.MAX_FACT_CHARS)
        vector = await self._embedder.embed(fact)
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
    ) -> list[Fact]:
        target = principal.resolve_scope(scope)
        check.bounded_int(top_k, "top_k", low=1, high=MAX_LIMIT)
        vector, floor = await self._query(query, min_similarity)
        return await self._facts.search(principal.tenant, target, vector, top_k=top_k, min_similarity=floor)

    async def forget_fact(self, principal: Principal, fact_id: str, *, scope: str | Scope | None = None) -> None:
        target = principal.resolve_scope(scope)
        parsed = as_uuid(fact_id)
        if parsed is None:
            raise InvalidInput(f"invalid fact id {fact_id!r}: expected a UUID")
        if not await self._facts.forget(principal.tenant, target, parsed):
            raise NotFound(f"fact {fact_id} does not exist in scope {target}")


__all__ = ["SharedMemory", "WorkspaceSummary", "format_shared_context"]
