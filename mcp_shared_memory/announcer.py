"""How committed changes reach the recent cache and the bus: one rule for writers and the sweep."""

from __future__ import annotations

import uuid

from .models import Event, Scope, Workspace
from .stores.bus import RedisBus
from .stores.cache import RedisCache
from .stores.episodic import ScopeWriter
from .stores.messages import EventWritten, WorkspaceChanged


class Announcer:
    def __init__(self, cache: RedisCache, bus: RedisBus, *, workspace_ttl: int) -> None:
        self._cache = cache
        self._bus = bus
        self._workspace_ttl = workspace_ttl

    async def events(
        self, writer: ScopeWriter, events: list[Event], *, dedup: tuple[uuid.UUID, str] | None = None
    ) -> int:
        """Put committed events of the writer's scope (oldest first) in the recent cache, then on the bus,
        in order, stopping at the first failure: what is not announced stays queued for the scope's next
        writer or the sweep, so the cache never holds an event without every earlier one. ``dedup``:
        (event id, content hash) of a claimed dedup key to point at the new event."""
        announced: list[Event] = []
        for event in events:
            dedup_hash = dedup[1] if dedup is not None and dedup[0] == event.id else None
            if not await self._cache.record_event(writer.tenant, event, dedup_hash=dedup_hash):
                break
            if not await self._bus.publish(EventWritten(writer.tenant, event.scope, event.id, event.seq)):
                break
            announced.append(event)
        writer.published(announced)
        return len(announced)

    async def workspace(
        self, tenant: str, workspace: Workspace, *, created: bool, before: Workspace | None = None
    ) -> None:
        """A workspace was created or changed in PostgreSQL (``before``: as it was): refresh the cached copy
        and tell subscribers, with its owner and roster so that only its members hear of it, and the agents
        added to or removed from the roster. Best effort: a reader falls back to PostgreSQL, and the cached
        copy only replaces an older one."""
        await self._cache.put_workspace(tenant, workspace, ttl=self._workspace_ttl, force=True)
        earlier = set(before.agents) if before is not None else set()
        await self._bus.publish(
            WorkspaceChanged(
                tenant, workspace.id, created, owner=workspace.created_by, agents=tuple(workspace.agents),
                added=tuple(a for a in workspace.agents if a not in earlier) if before is not None else (),
                removed=tuple(a for a in sorted(earlier) if a not in workspace.agents),
            )
        )  # fmt: skip

    async def removed(self, tenant: str, scope: Scope, events: list[tuple[uuid.UUID, int]]) -> None:
        """Events (id, seq) deleted from PostgreSQL (retracted, expired): out of the recent cache, and the
        scope's subscribers told (an ``EventWritten`` of the removed event: they re-read the scope)."""
        await self._cache.drop_recent(tenant, scope, [seq for _, seq in events])
        for event_id, seq in events[-1:]:
            await self._bus.publish(EventWritten(tenant, scope, event_id, seq))
