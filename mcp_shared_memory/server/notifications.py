"""Bus messages → MCP notifications, for both protocol generations.

The bus (``stores/bus.py``) hands this hub typed messages for the topics its clients subscribed to;
the hub turns them into ``notifications/resources/updated`` (and ``list_changed`` for new workspaces):
on modern ``subscriptions/listen`` streams through a ``TenantBus`` that delivers only within the
listener's tenant, and on legacy connections for the URIs each subscribed to. Each legacy session has
its own sender task and a coalescing queue, so a slow or broken client never delays the others, and a
failing send never reaches the server's task group.
"""

from __future__ import annotations

import contextvars
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Protocol

import anyio
import anyio.abc
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent

from ..stores.bus import BusMessage, EventWritten, RedisBus, Topic
from .uris import context_uri, parse_uri, recent_uri, workspaces_uri

log = logging.getLogger(__name__)

# A legacy client that cannot take a notification within this long is skipped for that notification.
SEND_TIMEOUT = 5.0

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

    def publish_to_tenant(self, tenant: str, event: ServerEvent) -> None:
        self._deliver(event, tenant)

    def _deliver(self, event: ServerEvent, tenant: str | None) -> None:
        for owner, listener in list(self._listeners.values()):
            if tenant is not None and owner != tenant:
                continue
            try:
                listener(event)
            except Exception:
                log.exception("listen stream listener failed")


class SessionSender:
    """One legacy session's queue of notifications and the task that sends them. Updates of the same
    URI coalesce while queued (the client re-reads the resource anyway)."""

    def __init__(self, session: LegacySession) -> None:
        self._session = session
        self._updated: dict[str, None] = {}
        self._list_changed = False
        self._wake = anyio.Event()
        self._closed = False

    def resource_updated(self, uri: str) -> None:
        self._updated[uri] = None
        self._wake.set()

    def list_changed(self) -> None:
        self._list_changed = True
        self._wake.set()

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    async def run(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake = anyio.Event()
            uris, self._updated = list(self._updated), {}
            list_changed, self._list_changed = self._list_changed, False
            for uri in uris:
                if self._closed or not await self._send(self._session.send_resource_updated, uri):
                    return
            if list_changed and not self._closed and not await self._send(self._session.send_resource_list_changed):
                return

    async def _send(self, send: Callable[..., object], *args: str) -> bool:
        """False when the session is gone (its stream is closed): the sender stops."""
        try:
            with anyio.fail_after(SEND_TIMEOUT):
                await send(*args)  # type: ignore[misc]
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            self._closed = True
            return False
        except TimeoutError:
            log.warning("a client did not take a notification within %.0f s; skipped", SEND_TIMEOUT)
        except Exception:
            log.warning("sending a notification failed; the session stays subscribed", exc_info=True)
        return True


class NotificationHub:
    def __init__(self, bus: RedisBus, listeners: TenantBus) -> None:
        self._bus = bus
        self.listeners = listeners
        self._senders: dict[int, SessionSender] = {}
        self._legacy_uris: dict[str, set[int]] = defaultdict(set)
        self._legacy_tenants: dict[str, set[int]] = defaultdict(set)
        self._tasks: anyio.abc.TaskGroup | None = None

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hosts the legacy sessions' sender tasks and listens to the bus until cancelled."""
        remove = self._bus.add_listener(self._on_message)
        try:
            async with anyio.create_task_group() as tasks:
                self._tasks = tasks
                task_status.started()
                await anyio.sleep_forever()
        finally:
            remove()
            self._tasks = None

    # topics

    async def acquire(self, topic: Topic) -> None:
        await self._bus.subscribe(topic)

    async def release(self, topic: Topic) -> None:
        await self._bus.unsubscribe(topic)

    # legacy (resources/subscribe) connections

    def add_legacy_session(self, tenant: str, key: int, session: LegacySession) -> None:
        if key in self._senders:
            return
        if self._tasks is None:
            raise RuntimeError("the notification hub is not running")
        sender = SessionSender(session)
        self._senders[key] = sender
        self._legacy_tenants[tenant].add(key)
        self._tasks.start_soon(sender.run)

    def add_legacy_subscription(self, uri: str, key: int) -> None:
        self._legacy_uris[uri].add(key)

    def has_legacy_subscription(self, uri: str, key: int) -> bool:
        return key in self._legacy_uris.get(uri, ())

    def remove_legacy_subscription(self, uri: str, key: int) -> bool:
        subscribers = self._legacy_uris.get(uri)
        if subscribers is None or key not in subscribers:
            return False
        subscribers.discard(key)
        if not subscribers:
            del self._legacy_uris[uri]
        return True

    def forget_connection(self, tenant: str, key: int) -> list[str]:
        """Drop a closed connection; returns the URIs it was subscribed to."""
        sender = self._senders.pop(key, None)
        if sender is not None:
            sender.close()
        self._legacy_tenants.get(tenant, set()).discard(key)
        uris = [uri for uri, keys in self._legacy_uris.items() if key in keys]
        for uri in uris:
            self.remove_legacy_subscription(uri, key)
        return uris

    # delivery

    async def _on_message(self, message: BusMessage) -> None:
        if isinstance(message, EventWritten):
            self._updated(message.tenant, recent_uri(message.tenant, message.scope))
            return
        self._updated(message.tenant, context_uri(message.tenant, message.workspace_id))
        self._updated(message.tenant, workspaces_uri(message.tenant))
        if message.created:
            self.listeners.publish_to_tenant(message.tenant, ResourcesListChanged())
            for key in self._legacy_tenants.get(message.tenant, ()):
                if sender := self._senders.get(key):
                    sender.list_changed()

    def _updated(self, tenant: str, uri: str) -> None:
        self.listeners.publish_to_tenant(tenant, ResourceUpdated(uri=uri))
        for key in self._legacy_uris.get(uri, ()):
            if sender := self._senders.get(key):
                sender.resource_updated(uri)
