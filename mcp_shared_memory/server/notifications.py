"""Redis pub/sub → MCP notifications, for both protocol generations, across processes and replicas.

Each process subscribes only to the Redis channels its clients need (reference-counted, released
when the last subscriber leaves) and turns a message into ``notifications/resources/updated`` (and
``list_changed`` for new workspaces): on legacy connections for the URIs each subscribed to, on
modern ``subscriptions/listen`` streams through a bus that delivers only within the listener's tenant.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import anyio
import redis.asyncio as aioredis
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent

from ..models import Scope
from ..stores.cache import REDIS_ERRORS, RedisKeys
from .uris import context_uri, parse_uri, recent_uri, workspaces_uri

log = logging.getLogger(__name__)

# Set around a subscriptions/listen call: the tenant the opening stream belongs to.
LISTEN_TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar("msm_listen_tenant", default=None)


class LegacySession(Protocol):
    async def send_resource_updated(self, uri: str) -> None: ...

    async def send_resource_list_changed(self) -> None: ...


class TenantBus:
    """A ``SubscriptionBus`` whose listeners are tagged with their tenant at subscribe time, because
    the SDK's listen fan-out has no per-session targeting."""

    def __init__(self) -> None:
        self._listeners: dict[object, tuple[str | None, Callable[[ServerEvent], None]]] = {}

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        token = object()
        self._listeners[token] = (LISTEN_TENANT.get(), listener)

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe

    async def publish(self, event: ServerEvent) -> None:
        tenant = None
        if isinstance(event, ResourceUpdated):
            parsed = parse_uri(str(event.uri))
            tenant = parsed.tenant if parsed else None
        elif isinstance(event, ResourcesListChanged):
            return  # only ever published per tenant, through publish_to_tenant
        self._deliver(event, tenant)
        await anyio.lowlevel.checkpoint()

    async def publish_to_tenant(self, tenant: str, event: ServerEvent) -> None:
        self._deliver(event, tenant)
        await anyio.lowlevel.checkpoint()

    def _deliver(self, event: ServerEvent, tenant: str | None) -> None:
        for owner, listener in list(self._listeners.values()):
            if tenant is not None and owner != tenant:
                continue
            try:
                listener(event)
            except Exception:
                log.exception("listen stream listener failed")


@dataclass(frozen=True)
class Route:
    """What a Redis channel means to this process."""

    tenant: str
    scope: Scope | None  # None: the tenant's workspaces channel


class NotificationHub:
    def __init__(self, client: aioredis.Redis, keys: RedisKeys, bus: TenantBus) -> None:
        self.bus = bus
        self._keys = keys
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._refcounts: dict[str, int] = defaultdict(int)
        # Channels whose SUBSCRIBE failed (Redis down): retried by the reader loop until they succeed.
        self._unsubscribed: set[str] = set()
        self._routes: dict[str, Route] = {}
        self._lock = anyio.Lock()
        self._has_channels = anyio.Event()
        self._legacy_uris: dict[str, dict[int, LegacySession]] = defaultdict(dict)
        self._legacy_sessions: dict[str, dict[int, LegacySession]] = defaultdict(dict)

    # channel reference counting

    def channel_for(self, tenant: str, scope: Scope | None) -> str:
        if scope is None:
            return self._keys.workspaces_channel(tenant)
        return self._keys.events_channel(tenant, scope)

    def channel_for_uri(self, uri: str) -> str | None:
        parsed = parse_uri(uri)
        if parsed is None:
            return None
        return self.channel_for(parsed.tenant, parsed.scope if parsed.kind == "recent" else None)

    async def acquire(self, tenant: str, scope: Scope | None) -> str:
        channel = self.channel_for(tenant, scope)
        async with self._lock:
            self._refcounts[channel] += 1
            if self._refcounts[channel] == 1:
                self._routes[channel] = Route(tenant, scope)
                self._unsubscribed.add(channel)
                await self._subscribe_pending()
                self._has_channels.set()
        return channel

    async def release(self, channel: str) -> None:
        async with self._lock:
            if self._refcounts.get(channel, 0) <= 0:
                return
            self._refcounts[channel] -= 1
            if self._refcounts[channel] == 0:
                del self._refcounts[channel]
                self._routes.pop(channel, None)
                if channel in self._unsubscribed:
                    self._unsubscribed.discard(channel)
                    return
                try:
                    await self._pubsub.unsubscribe(channel)
                except REDIS_ERRORS as exc:
                    log.warning("Redis unsubscribe failed (%s)", type(exc).__name__)

    async def _subscribe_pending(self) -> None:
        """SUBSCRIBE the channels not yet subscribed; on failure they stay pending (redis-py only
        re-subscribes, after a reconnect, the channels whose SUBSCRIBE succeeded)."""
        pending = sorted(self._unsubscribed)
        if not pending:
            return
        try:
            await self._pubsub.subscribe(*pending)
        except REDIS_ERRORS as exc:
            log.warning("Redis subscribe failed (%s); retrying", type(exc).__name__)
            return
        self._unsubscribed.difference_update(pending)

    def subscribed_channels(self) -> set[str]:
        return set(self._refcounts)

    # legacy (resources/subscribe) connections

    def add_legacy_subscription(self, uri: str, key: int, session: LegacySession) -> None:
        self._legacy_uris[uri][key] = session

    def has_legacy_subscription(self, uri: str, key: int) -> bool:
        return key in self._legacy_uris.get(uri, {})

    def remove_legacy_subscription(self, uri: str, key: int) -> bool:
        subscribers = self._legacy_uris.get(uri, {})
        removed = subscribers.pop(key, None) is not None
        if not subscribers:
            self._legacy_uris.pop(uri, None)
        return removed

    def add_legacy_session(self, tenant: str, key: int, session: LegacySession) -> None:
        self._legacy_sessions[tenant][key] = session

    def forget_connection(self, tenant: str, key: int) -> list[str]:
        """Drop a closed connection; returns the URIs it was subscribed to."""
        self._legacy_sessions.get(tenant, {}).pop(key, None)
        uris = [uri for uri, subs in self._legacy_uris.items() if key in subs]
        for uri in uris:
            self.remove_legacy_subscription(uri, key)
        return uris

    # delivery

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read Redis messages forever. Never raises: Redis outages and restarts are waited out, since
        this task living in the server's lifespan must not take the server down with it."""
        task_status.started()
        while True:
            await self._has_channels.wait()
            try:
                if self._unsubscribed:
                    async with self._lock:
                        await self._subscribe_pending()
                if self._pubsub.connection is None:  # nothing subscribed successfully yet
                    await anyio.sleep(0.5)
                    continue
                message = await self._pubsub.get_message(timeout=1.0)
            except REDIS_ERRORS as exc:
                log.warning("Redis pub/sub connection lost (%s); reconnecting", type(exc).__name__)
                await anyio.sleep(0.5)
                continue
            except Exception:
                log.exception("unexpected error reading Redis pub/sub; continuing")
                await anyio.sleep(0.5)
                continue
            if message is not None and message.get("type") == "message":
                await self.dispatch(message["channel"], message["data"])

    async def dispatch(self, channel: str, data: str) -> None:
        route = self._routes.get(channel)
        if route is None:
            return
        if route.scope is not None:
            await self.resource_updated(route.tenant, recent_uri(route.tenant, route.scope))
            return
        try:
            change: dict[str, Any] = json.loads(data)
        except ValueError:
            return
        workspace_id = str(change.get("workspace_id", ""))
        if workspace_id:
            await self.resource_updated(route.tenant, context_uri(route.tenant, workspace_id))
        await self.resource_updated(route.tenant, workspaces_uri(route.tenant))
        if change.get("created"):
            await self.list_changed(route.tenant)

    async def resource_updated(self, tenant: str, uri: str) -> None:
        await self.bus.publish_to_tenant(tenant, ResourceUpdated(uri=uri))
        for session in list(self._legacy_uris.get(uri, {}).values()):
            await session.send_resource_updated(uri)

    async def list_changed(self, tenant: str) -> None:
        await self.bus.publish_to_tenant(tenant, ResourcesListChanged())
        for session in list(self._legacy_sessions.get(tenant, {}).values()):
            await session.send_resource_list_changed()

    async def close(self) -> None:
        with contextlib.suppress(REDIS_ERRORS):
            await self._pubsub.aclose()
