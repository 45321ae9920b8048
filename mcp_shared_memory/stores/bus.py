"""The bus: Redis pub/sub between every process and replica of an installation.

Typed messages (an event was written in a scope; a workspace changed) on one channel per scope and
one per tenant for workspaces. A process subscribes only to the channels its listeners need
(reference-counted), and a single reader task hands each message to the listeners. Messages carry
identifiers only (scope, event, workspace and agent ids), never content. Pub/sub is fire-and-forget: a
message published while a subscriber is disconnected is lost for it, which is why readers can always
catch up from the log (``since_seq``).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import redis.asyncio as aioredis

from ..models import Scope
from .redis_client import REDIS_ERRORS, RedisBreaker

log = logging.getLogger(__name__)

RECONNECT_FIRST = 0.05
RECONNECT_MAX = 1.0
READ_TIMEOUT = 1.0


@dataclass(frozen=True, slots=True)
class Topic:
    """What a subscriber wants to hear about: a scope's events, or (scope None) a tenant's workspaces."""

    tenant: str
    scope: Scope | None = None


@dataclass(frozen=True, slots=True)
class EventWritten:
    tenant: str
    scope: Scope
    event_id: uuid.UUID
    seq: int


@dataclass(frozen=True, slots=True)
class WorkspaceChanged:
    """A workspace was created or changed. ``owner`` and ``agents`` say who may hear of it (None: sent by an
    older version, look them up); ``added`` and ``removed``: the agents this change put on or took off its roster."""

    tenant: str
    workspace_id: str
    created: bool
    owner: str | None = None
    agents: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


BusMessage = EventWritten | WorkspaceChanged
Listener = Callable[[BusMessage], Awaitable[None]]


class RedisBus:
    def __init__(self, client: aioredis.Redis, *, prefix: str, breaker: RedisBreaker) -> None:
        self._redis = client
        self._prefix = prefix
        self._breaker = breaker
        self._pubsub: Any = None  # created on the first subscription: a dedicated connection
        self._refcounts: dict[str, int] = defaultdict(int)
        self._topics: dict[str, Topic] = {}
        # Channels whose SUBSCRIBE has not succeeded yet (Redis down): retried by the reader until it does;
        # redis-py re-subscribes after a reconnect only the channels whose SUBSCRIBE succeeded.
        self._pending: set[str] = set()
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._listeners: dict[object, Listener] = {}

    def channel(self, topic: Topic) -> str:
        if topic.scope is None:
            return f"{self._prefix}:workspaces:{topic.tenant}"
        return f"{self._prefix}:events:{topic.tenant}:{topic.scope.type}:{topic.scope.id}"

    # publishing

    async def publish(self, message: BusMessage) -> bool:
        """Never raises: False when Redis failed (the caller decides whether to try again later)."""
        if isinstance(message, EventWritten):
            topic = Topic(message.tenant, message.scope)
            payload = {"event_id": str(message.event_id), "seq": message.seq}
        else:
            topic = Topic(message.tenant)
            payload = {
                "workspace_id": message.workspace_id, "created": message.created, "owner": message.owner,
                "agents": list(message.agents), "added": list(message.added), "removed": list(message.removed),
            }  # fmt: skip
        try:
            await self._redis.publish(self.channel(topic), json.dumps(payload))
        except REDIS_ERRORS as exc:
            self._breaker.trip("publish", exc)
            return False
        return True

    # subscribing

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """``listener`` receives every message of the subscribed topics; returns its removal. Listeners
        must return quickly (queue the work): the reader awaits each in turn."""
        token = object()
        self._listeners[token] = listener

        def remove() -> None:
            self._listeners.pop(token, None)

        return remove

    async def subscribe(self, topic: Topic) -> None:
        channel = self.channel(topic)
        async with self._lock:
            self._refcounts[channel] += 1
            if self._refcounts[channel] == 1:
                self._topics[channel] = topic
                self._pending.add(channel)
                await self._subscribe_pending()
                self._wake.set()

    async def unsubscribe(self, topic: Topic) -> None:
        channel = self.channel(topic)
        async with self._lock:
            if self._refcounts.get(channel, 0) <= 0:
                return
            self._refcounts[channel] -= 1
            if self._refcounts[channel]:
                return
            del self._refcounts[channel]
            self._topics.pop(channel, None)
            if channel in self._pending:
                self._pending.discard(channel)
                return
            try:
                await self._pubsub.unsubscribe(channel)
            except REDIS_ERRORS as exc:
                log.warning("Redis unsubscribe failed (%s)", type(exc).__name__)

    @asynccontextmanager
    async def subscription(self, topic: Topic) -> AsyncIterator[None]:
        await self.subscribe(topic)
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                await self.unsubscribe(topic)

    def subscribed(self) -> set[Topic]:
        return set(self._topics.values())

    async def _subscribe_pending(self) -> None:
        pending = sorted(self._pending)
        if not pending:
            return
        if self._pubsub is None:
            self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        try:
            await self._pubsub.subscribe(*pending)
        except REDIS_ERRORS as exc:
            log.debug("Redis subscribe failed (%s); the reader retries", type(exc).__name__)
            return
        self._pending.difference_update(pending)

    # reading

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read messages until cancelled. Never raises: Redis outages and restarts are waited out with a
        capped backoff (logged once per outage), since the task lives as long as the process."""
        task_status.started()
        delay = 0.0
        while True:
            try:
                if self._pending:
                    async with self._lock:
                        await self._subscribe_pending()
                if self._pubsub is None or self._pubsub.connection is None:
                    await self._idle(until_retry=bool(self._pending))
                    continue
                raw = await self._pubsub.get_message(timeout=READ_TIMEOUT)
            except REDIS_ERRORS as exc:
                if not delay:
                    log.warning("Redis pub/sub connection lost (%s); reconnecting", type(exc).__name__)
                delay = min(RECONNECT_MAX, max(RECONNECT_FIRST, delay * 2))
                await anyio.sleep(delay)
                continue
            if delay:
                log.warning("Redis pub/sub connection restored")
                delay = 0.0
            if raw is not None and raw.get("type") == "message":
                message = self._parse(raw["channel"], raw["data"])
                if message is not None:
                    await self._deliver(message)

    async def _idle(self, *, until_retry: bool) -> None:
        """Wait for a new subscription (or, with SUBSCRIBEs pending, until it is time to retry them)."""
        with anyio.move_on_after(RECONNECT_MAX if until_retry else float("inf")):
            await self._wake.wait()
        self._wake = anyio.Event()

    def _parse(self, channel: str, data: str) -> BusMessage | None:
        topic = self._topics.get(channel)
        if topic is None:
            return None
        try:
            payload = json.loads(data)
            if topic.scope is not None:
                return EventWritten(topic.tenant, topic.scope, uuid.UUID(payload["event_id"]), int(payload["seq"]))
            owner = payload.get("owner")
            return WorkspaceChanged(
                topic.tenant, str(payload["workspace_id"]), bool(payload.get("created")),
                owner=str(owner) if owner is not None else None, agents=_ids(payload, "agents"),
                added=_ids(payload, "added"), removed=_ids(payload, "removed"),
            )  # fmt: skip
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed message on a bus channel")
            return None

    async def _deliver(self, message: BusMessage) -> None:
        for listener in list(self._listeners.values()):
            try:
                await listener(message)
            except Exception:
                log.exception("a bus listener failed; the others still receive the message")

    async def close(self) -> None:
        if self._pubsub is not None:
            with suppress(*REDIS_ERRORS):
                await self._pubsub.aclose()


def _ids(payload: dict[str, Any], key: str) -> tuple[str, ...]:
    values = payload.get(key) or []
    if not isinstance(values, list):
        raise TypeError(f"{key} is not a list")
    return tuple(str(v) for v in values)
