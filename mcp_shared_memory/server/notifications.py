"""Bus messages → MCP notifications, for both protocol generations, each only to the sessions that may
read what changed.

The bus (``stores/bus.py``) hands this hub typed messages for the topics its clients subscribed to; the
hub turns them into ``notifications/resources/updated`` (and ``list_changed`` when the workspaces a
session sees change): on modern ``subscriptions/listen`` streams through a ``ListenerBus`` that knows each
listener's principal, and on legacy connections for the URIs each subscribed to. A session hears of a
scope's events only with a grant that reads the scope, and of a workspace (its events, its changes, its
creation) only as a member that may read it (``may_read_workspace``); the agents a change adds to or
removes from a roster hear of that change. One task of the hub handles the messages in order, so the bus
reader never waits for a roster lookup. Each legacy session has its own sender task and a coalescing
queue, so a slow or broken client never delays the others, and a failing send never reaches the server's
task group.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent

from ..errors import SharedMemoryError
from ..models import Principal, Scope
from ..stores.messages import BusMessage, Topic, WorkspaceChanged
from ..workspace_rules import may_read_workspace
from .uris import context_uri, recent_uri, workspaces_uri

if TYPE_CHECKING:
    from ..stores.bus import RedisBus

log = logging.getLogger(__name__)

# A legacy client that cannot take a notification within this long is skipped for that notification.
SEND_TIMEOUT = 5.0
# A workspace's roster, once looked up for its events' audience, is trusted this long. A change heard on
# the bus replaces it at once (the hub listens for changes while it listens to a workspace's events); the
# lifetime bounds a stale roster when such a message is lost (Redis reconnecting).
ROSTER_TTL = 5.0
ROSTERS_MAX = 10_000
# Bus messages waiting for the hub's task; beyond this (a stalled store) new ones are dropped, logged.
QUEUE_MAX = 10_000

# Set around a subscriptions/listen call: the principal the opening stream belongs to.
LISTEN_PRINCIPAL: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "msm_listen_principal", default=None
)

# Who may hear of a change, asked per session.
Audience = Callable[[Principal], bool]


class LegacySession(Protocol):
    async def send_resource_updated(self, uri: str) -> None: ...

    async def send_resource_list_changed(self) -> None: ...


class WorkspaceDirectory(Protocol):
    """Where the hub looks up a workspace's owner and roster (``SharedMemory``)."""

    async def workspace_audience(self, tenant: str, workspace_id: str) -> tuple[str, list[str]] | None: ...


class ListenerBus:
    """A ``SubscriptionBus`` whose listeners are tagged with their principal at subscribe time, because
    the SDK's listen fan-out has no per-session targeting: the hub delivers each event to the listeners
    of its audience."""

    def __init__(self) -> None:
        self._listeners: dict[object, tuple[Principal | None, Callable[[ServerEvent], None]]] = {}

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        token = object()
        self._listeners[token] = (LISTEN_PRINCIPAL.get(), listener)

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe

    async def publish(self, event: ServerEvent) -> None:
        """The SDK's own publishing path (``ctx.send_resource_updated``), which this server does not use:
        such an event says nothing of who may hear it, so nobody does."""
        await anyio.lowlevel.checkpoint()

    def deliver(self, tenant: str, event: ServerEvent, audience: Audience) -> None:
        for principal, listener in list(self._listeners.values()):
            if principal is None or principal.tenant != tenant or not audience(principal):
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
    def __init__(self, bus: RedisBus, listeners: ListenerBus, workspaces: WorkspaceDirectory) -> None:
        self._bus = bus
        self.listeners = listeners
        self._workspaces = workspaces
        self._senders: dict[int, SessionSender] = {}
        self._principals: dict[int, Principal] = {}
        self._legacy_uris: dict[str, set[int]] = defaultdict(set)
        self._legacy_tenants: dict[str, set[int]] = defaultdict(set)
        self._rosters: dict[tuple[str, str], tuple[float, str, tuple[str, ...]]] = {}
        self._tasks: anyio.abc.TaskGroup | None = None
        self._incoming: MemoryObjectSendStream[BusMessage] | None = None
        self._dropped = 0

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Hosts the legacy sessions' sender tasks and handles the bus's messages until cancelled."""
        self._incoming, queued = anyio.create_memory_object_stream[BusMessage](QUEUE_MAX)
        remove = self._bus.add_listener(self._on_message)
        try:
            with self._incoming, queued:
                async with anyio.create_task_group() as tasks:
                    self._tasks = tasks
                    tasks.start_soon(self._handle_messages, queued)
                    task_status.started()
                    await anyio.sleep_forever()
        finally:
            remove()
            self._tasks = None

    # topics

    async def acquire(self, topic: Topic) -> None:
        await self._bus.subscribe(topic)
        if topic.scope is not None and topic.scope.type == "workspace":
            # The workspace's roster changes are heard too, so that its events reach its members of now.
            await self._bus.subscribe(Topic(topic.tenant))

    async def release(self, topic: Topic) -> None:
        await self._bus.unsubscribe(topic)
        if topic.scope is not None and topic.scope.type == "workspace":
            await self._bus.unsubscribe(Topic(topic.tenant))

    # legacy (resources/subscribe) connections

    def add_legacy_session(self, principal: Principal, key: int, session: LegacySession) -> None:
        if key in self._senders:
            return
        if self._tasks is None:
            raise RuntimeError("the notification hub is not running")
        sender = SessionSender(session)
        self._senders[key] = sender
        self._principals[key] = principal
        self._legacy_tenants[principal.tenant].add(key)
        self._tasks.start_soon(sender.run)

    def add_legacy_subscription(self, uri: str, key: int) -> None:
        self._legacy_uris[uri].add(key)

    def has_legacy_subscription(self, uri: str, key: int) -> bool:
        return key in self._legacy_uris.get(uri, ())

    def legacy_subscription_count(self, key: int) -> int:
        """The resources a legacy connection is subscribed to (capped by ``MSM_MAX_SUBSCRIPTIONS``)."""
        return sum(1 for keys in self._legacy_uris.values() if key in keys)

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
        self._principals.pop(key, None)
        self._legacy_tenants.get(tenant, set()).discard(key)
        uris = [uri for uri, keys in self._legacy_uris.items() if key in keys]
        for uri in uris:
            self.remove_legacy_subscription(uri, key)
        return uris

    # delivery

    async def _on_message(self, message: BusMessage) -> None:
        if self._incoming is None:
            return
        try:
            self._incoming.send_nowait(message)
        except anyio.ClosedResourceError:
            pass  # the hub is stopping
        except anyio.WouldBlock:
            if not self._dropped:
                log.warning("notifications are falling behind: dropping bus messages")
            self._dropped += 1

    async def _handle_messages(self, queued: MemoryObjectReceiveStream[BusMessage]) -> None:
        async for message in queued:
            if self._dropped:
                log.warning("%d bus messages were dropped while the hub fell behind", self._dropped)
                self._dropped = 0
            try:
                await self._handle(message)
            except SharedMemoryError as exc:  # a roster lookup failed: nobody hears of this one
                log.warning("a notification was not sent: %s", exc.message)
            except Exception:
                log.exception("handling a bus message failed")

    async def _handle(self, message: BusMessage) -> None:
        if isinstance(message, WorkspaceChanged):
            await self._workspace_changed(message)
            return
        scope, tenant = message.scope, message.tenant
        if scope.type == "workspace":
            roster = await self._roster(tenant, scope.id)
            if roster is not None:
                self._updated(tenant, recent_uri(tenant, scope), readers(scope.id, *roster))
            return
        self._updated(tenant, recent_uri(tenant, scope), lambda principal: principal.may_use(scope))

    async def _workspace_changed(self, message: WorkspaceChanged) -> None:
        tenant, workspace_id = message.tenant, message.workspace_id
        if message.owner is None:  # from an older version: look the roster up
            self._rosters.pop((tenant, workspace_id), None)
            roster = await self._roster(tenant, workspace_id)
            if roster is None:
                return
            owner, agents = roster
        else:
            owner, agents = message.owner, message.agents
            self._remember(tenant, workspace_id, owner, agents)
        members = readers(workspace_id, owner, agents)
        scope = Scope("workspace", workspace_id)
        left = set(message.removed) - {owner}
        roster_changed = set(message.added) | left

        def told(principal: Principal) -> bool:
            return members(principal) or (principal.agent_id in left and principal.may_use(scope))

        self._updated(tenant, context_uri(tenant, workspace_id), told)
        self._updated(tenant, workspaces_uri(tenant), told)
        if message.created:
            self._list_changed(tenant, members)
        elif roster_changed:
            self._list_changed(tenant, lambda p: p.agent_id in roster_changed and p.may_use(scope))

    async def _roster(self, tenant: str, workspace_id: str) -> tuple[str, tuple[str, ...]] | None:
        """(owner, agents) of a workspace, remembered for ``ROSTER_TTL``; None when it does not exist."""
        known = self._rosters.get((tenant, workspace_id))
        if known is not None and known[0] > time.monotonic():
            return known[1], known[2]
        found = await self._workspaces.workspace_audience(tenant, workspace_id)
        if found is None:
            return None
        self._remember(tenant, workspace_id, found[0], found[1])
        return found[0], tuple(found[1])

    def _remember(self, tenant: str, workspace_id: str, owner: str, agents: Collection[str]) -> None:
        if len(self._rosters) >= ROSTERS_MAX:
            self._rosters.clear()
        self._rosters[(tenant, workspace_id)] = (time.monotonic() + ROSTER_TTL, owner, tuple(agents))

    def _updated(self, tenant: str, uri: str, audience: Audience) -> None:
        self.listeners.deliver(tenant, ResourceUpdated(uri=uri), audience)
        for key in self._legacy_uris.get(uri, ()):
            if (sender := self._sender_for(key, tenant, audience)) is not None:
                sender.resource_updated(uri)

    def _list_changed(self, tenant: str, audience: Audience) -> None:
        self.listeners.deliver(tenant, ResourcesListChanged(), audience)
        for key in self._legacy_tenants.get(tenant, ()):
            if (sender := self._sender_for(key, tenant, audience)) is not None:
                sender.list_changed()

    def _sender_for(self, key: int, tenant: str, audience: Audience) -> SessionSender | None:
        principal = self._principals.get(key)
        if principal is None or principal.tenant != tenant or not audience(principal):
            return None
        return self._senders.get(key)


def readers(workspace_id: str, owner: str, agents: Collection[str]) -> Audience:
    """The sessions that may read the workspace: its members with a grant that reads it."""
    return lambda principal: may_read_workspace(principal, workspace_id, owner, agents)
