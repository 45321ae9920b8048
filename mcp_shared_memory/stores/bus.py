"""The bus: Redis pub/sub between every process and replica of an installation.

Typed messages (an event was written in a scope; a workspace changed) on one channel per scope and
one per tenant for workspaces. A process subscribes only to the channels its listeners need
(reference-counted), and a reader task per connection hands each message to the listeners. Messages carry
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
from typing import Any

import anyio
import anyio.abc
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError

from .messages import BusMessage, EventWritten, Topic, WorkspaceChanged
from .redis_client import REDIS_ERRORS, UNDER_LOCK_SECONDS, RedisBreaker, RedisClient, node_client

log = logging.getLogger(__name__)

RECONNECT_FIRST = 0.05
RECONNECT_MAX = 1.0
READ_TIMEOUT = 1.0


Listener = Callable[[BusMessage], Awaitable[None]]


class _Subscriber:
    """One pub/sub connection and the channels subscribed on it: the server's (single-node Redis, plain
    SUBSCRIBE) or one cluster node's (its shard channels, SSUBSCRIBE). Each has its own reader task:
    polling several connections in turn would delay one shard's messages by the others' read timeouts."""

    def __init__(self, pubsub: Any, *, sharded: bool, client: aioredis.Redis | None = None) -> None:
        self.pubsub = pubsub
        self.sharded = sharded
        self.client = client  # a cluster node's own client, closed with the connection
        self.channels: set[str] = set()
        self.reading: anyio.CancelScope | None = None
        self.started = False  # its reader: started once a SUBSCRIBE went through (the connection exists)
        self.closed = False

    async def subscribe(self, channel: str) -> None:
        await (self.pubsub.ssubscribe if self.sharded else self.pubsub.subscribe)(channel)
        self.channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self.channels.discard(channel)
        await (self.pubsub.sunsubscribe if self.sharded else self.pubsub.unsubscribe)(channel)

    async def close(self) -> None:
        self.closed = True
        if self.reading is not None:
            self.reading.cancel()
        with suppress(*REDIS_ERRORS):
            await self.pubsub.aclose()
        if self.client is not None:
            with suppress(*REDIS_ERRORS):
                await self.client.aclose()


class RedisBus:
    """On a Redis Cluster the channels are sharded (SPUBLISH/SSUBSCRIBE, Redis >= 7): a message goes to
    the node that owns its channel's slot instead of being broadcast to every node, and the bus holds one
    connection per node it listens on. A connection that fails is dropped and its channels subscribed
    again, with a capped backoff, wherever the slot map says they live now (after a failover: on the
    promoted replica)."""

    def __init__(self, client: RedisClient, *, prefix: str, breaker: RedisBreaker) -> None:
        self._redis = client
        self._prefix = prefix
        self._breaker = breaker
        self._subscribers: dict[str, _Subscriber] = {}  # by node name ('' for single-node Redis)
        self._owner: dict[str, _Subscriber] = {}  # channel -> the connection it is subscribed on
        self._refcounts: dict[str, int] = defaultdict(int)
        self._topics: dict[str, Topic] = {}
        # Channels not subscribed yet (Redis down, a connection lost): retried by ``run`` until they are.
        self._pending: set[str] = set()
        self._lock = anyio.Lock()
        self._wake = anyio.Event()
        self._readers: anyio.abc.TaskGroup | None = None
        self._outage = False
        self._listeners: dict[object, Listener] = {}

    @property
    def sharded(self) -> bool:
        return isinstance(self._redis, RedisCluster)

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
            with anyio.fail_after(UNDER_LOCK_SECONDS):
                if isinstance(self._redis, RedisCluster):
                    await self._cluster_publish(self._redis, self.channel(topic), json.dumps(payload))
                else:
                    await self._redis.publish(self.channel(topic), json.dumps(payload))
        except REDIS_ERRORS as exc:
            self._breaker.trip("publish", exc)
            return False
        return True

    @staticmethod
    async def _cluster_publish(cluster: RedisCluster, channel: str, payload: str) -> None:
        try:
            await cluster.spublish(channel, payload)
        except AttributeError as exc:
            # redis-py 8.1 can hit a connection torn down by a failover mid-command (redis/redis-py#4287):
            # an outage like any other, the event stays in the outbox.
            raise RedisConnectionError("the node's connection closed during a failover") from exc

    # subscribing

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """``listener`` receives every message of the subscribed topics; returns its removal. Listeners
        must return quickly (queue the work): a reader awaits each in turn."""
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
            self._pending.discard(channel)
            subscriber = self._owner.pop(channel, None)
            if subscriber is None:
                return
            try:
                await subscriber.unsubscribe(channel)
            except REDIS_ERRORS as exc:
                log.warning("Redis unsubscribe failed (%s)", type(exc).__name__)
            if subscriber.sharded and not subscriber.channels:
                await self._drop(subscriber)

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
        """Subscribe what is pending (under the lock); on a failure the rest waits for the next round."""
        for channel in sorted(self._pending):
            subscriber: _Subscriber | None = None
            try:
                subscriber = await self._subscriber_for(channel)
                await subscriber.subscribe(channel)
            except REDIS_ERRORS as exc:
                log.debug("Redis subscribe failed (%s); retrying", type(exc).__name__)
                if subscriber is not None:
                    await self._drop(subscriber)
                self._outage = True
                return
            self._owner[channel] = subscriber
            self._pending.discard(channel)
            self._start_reader(subscriber)

    async def _subscriber_for(self, channel: str) -> _Subscriber:
        if not isinstance(self._redis, RedisCluster):
            if "" not in self._subscribers:
                pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
                self._subscribers[""] = _Subscriber(pubsub, sharded=False)
            return self._subscribers[""]
        await self._redis.initialize()
        node = self._redis.get_node_from_key(channel)
        if node is None:
            raise SlotNotCoveredError("no node serves this channel's slot")
        if node.name not in self._subscribers:
            client = node_client(self._redis, node)
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            self._subscribers[node.name] = _Subscriber(pubsub, sharded=True, client=client)
        return self._subscribers[node.name]

    def _start_reader(self, subscriber: _Subscriber) -> None:
        if self._readers is not None and not subscriber.started:
            subscriber.started = True
            self._readers.start_soon(self._read, subscriber)

    async def _drop(self, subscriber: _Subscriber) -> None:
        """Forget a connection (failed or idle); its channels are subscribed again by ``run``."""
        for name, known in list(self._subscribers.items()):
            if known is subscriber:
                del self._subscribers[name]
        for channel in subscriber.channels:
            if self._owner.get(channel) is subscriber:
                del self._owner[channel]
                self._pending.add(channel)
        await subscriber.close()
        self._wake.set()

    # reading

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Read messages until cancelled. Never raises: Redis outages, restarts and cluster failovers are
        waited out with a capped backoff (logged once per outage), since the task lives as long as the
        process."""
        async with anyio.create_task_group() as readers:
            self._readers = readers
            for subscriber in self._subscribers.values():
                if subscriber.channels:
                    self._start_reader(subscriber)
            task_status.started()
            delay = 0.0
            try:
                while True:
                    if self._pending:
                        async with self._lock:
                            if self._outage and isinstance(self._redis, RedisCluster):
                                await self._refresh_slots()
                            await self._subscribe_pending()
                    if self._pending:
                        delay = min(RECONNECT_MAX, max(RECONNECT_FIRST, delay * 2))
                    else:
                        delay = 0.0
                        if self._outage:
                            self._outage = False
                            log.warning("Redis pub/sub connection restored")
                    with anyio.move_on_after(delay if self._pending else float("inf")):
                        await self._wake.wait()
                    self._wake = anyio.Event()
            finally:
                self._readers = None
                readers.cancel_scope.cancel()

    async def _refresh_slots(self) -> None:
        """Re-read the slot map, so channels move to the node that owns them now."""
        assert isinstance(self._redis, RedisCluster)
        try:
            await self._redis.nodes_manager.initialize()
        except REDIS_ERRORS as exc:
            log.debug("Redis Cluster slot map not readable yet (%s)", type(exc).__name__)

    async def _read(self, subscriber: _Subscriber) -> None:
        failure: Exception | None = None
        with anyio.CancelScope() as scope:  # cancelled when the connection is dropped
            subscriber.reading = scope
            try:
                while True:
                    raw = await subscriber.pubsub.get_message(timeout=READ_TIMEOUT)
                    if raw is not None and raw.get("type") in ("message", "smessage"):
                        message = self._parse(raw["channel"], raw["data"])
                        if message is not None:
                            await self._deliver(message)
            except REDIS_ERRORS as exc:
                failure = exc
        subscriber.reading = None
        if failure is None or subscriber.closed:
            return
        async with self._lock:
            if not self._outage:
                log.warning("Redis pub/sub connection lost (%s); reconnecting", type(failure).__name__)
            self._outage = True
            await self._drop(subscriber)

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
        for subscriber in list(self._subscribers.values()):
            await subscriber.close()
        self._subscribers.clear()


def _ids(payload: dict[str, Any], key: str) -> tuple[str, ...]:
    values = payload.get(key) or []
    if not isinstance(values, list):
        raise TypeError(f"{key} is not a list")
    return tuple(str(v) for v in values)
