"""Prometheus metrics of this process, in a registry of its own (served at ``/metrics`` on HTTP).

What other modules update (each costs one lock and an add, about a microsecond):

- ``observe_tool_call(tool, outcome, seconds)``: the MCP middleware, once per ``tools/call``;
- ``notifications_sent.labels(kind).inc()``: the notification paths, per notification delivered;
- ``recent_cache_reads.labels(result).inc()``: the recent-events cache (``hit``, ``miss``, ``unavailable``);
- ``embedding_queue_depth.set(n)`` and ``embedding_queue_seconds.observe(s)``: the background embedding queue
  (events waiting for a vector, and the time from enqueue to stored vector);
- ``outbox_backlog.set(n)``: whoever counts the committed events not yet announced (the outbox sweep);
- ``watch_pool(name, usage)``: the composition root, once per pool; ``usage`` returns (open, idle, max)
  connections and is called at scrape time only.

Label values are bounded sets (tool names the server registered, error class names, fixed words): an
agent's input never becomes a label.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = [
    "CONTENT_TYPE_LATEST",
    "REGISTRY",
    "embedding_queue_depth",
    "embedding_queue_seconds",
    "exposition",
    "notifications_sent",
    "observe_tool_call",
    "outbox_backlog",
    "recent_cache_reads",
    "watch_pool",
]

REGISTRY = CollectorRegistry()

# Tool round trips in the server run from about a millisecond (a cached read) to seconds (a write that
# waits for a remote embedding model).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

tool_calls = Counter(
    "msm_tool_calls", "MCP tool calls, by tool and outcome (ok, or the error's kind)", ["tool", "outcome"],
    registry=REGISTRY,
)  # fmt: skip
tool_call_seconds = Histogram(
    "msm_tool_call_seconds", "MCP tool call latency in the server, by tool and outcome", ["tool", "outcome"],
    buckets=LATENCY_BUCKETS, registry=REGISTRY,
)  # fmt: skip
notifications_sent = Counter(
    "msm_notifications_sent", "MCP notifications delivered to clients, by kind (resource_updated, list_changed)",
    ["kind"], registry=REGISTRY,
)  # fmt: skip
recent_cache_reads = Counter(
    "msm_recent_cache_reads", "Reads of the Redis recent-events cache: hit, miss (cold scope), unavailable",
    ["result"], registry=REGISTRY,
)  # fmt: skip
embedding_queue_depth = Gauge(
    "msm_embedding_queue_depth", "Events waiting in the background embedding queue", registry=REGISTRY
)
embedding_queue_seconds = Histogram(
    "msm_embedding_queue_seconds", "Time from an event entering the embedding queue to its vector being stored",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0), registry=REGISTRY,
)  # fmt: skip
outbox_backlog = Gauge(
    "msm_outbox_backlog", "Committed events not yet announced to Redis (as of the last outbox sweep)",
    registry=REGISTRY,
)  # fmt: skip
db_pool_connections = Gauge(
    "msm_db_pool_connections", "PostgreSQL pool connections, by pool and state (open, idle, max)",
    ["pool", "state"], registry=REGISTRY,
)  # fmt: skip
client_log_messages = Counter(
    "msm_client_log_messages", "Log messages sent to MCP clients (notifications/message), by level", ["level"],
    registry=REGISTRY,
)  # fmt: skip

for _result in ("hit", "miss", "unavailable"):
    recent_cache_reads.labels(_result)  # present at 0 from the start, so a ratio is defined
for _kind in ("resource_updated", "list_changed"):
    notifications_sent.labels(_kind)


_tool_children: dict[tuple[str, str], tuple[Any, Any]] = {}


def observe_tool_call(tool: str, outcome: str, seconds: float) -> None:
    """Count a tool call and its latency. The labelled children are cached: ``labels()`` takes a lock and
    builds a key on every call, which doubled the cost."""
    children = _tool_children.get((tool, outcome))
    if children is None:
        children = _tool_children.setdefault(
            (tool, outcome), (tool_calls.labels(tool, outcome), tool_call_seconds.labels(tool, outcome))
        )
    children[0].inc()
    children[1].observe(seconds)


PoolUsage = Callable[[], tuple[int, int, int]]


def watch_pool(name: str, usage: PoolUsage) -> None:
    """Report a pool's (open, idle, max) connections under ``pool=name``, read when scraped. A later call
    with the same name replaces the earlier one (the pool of the runtime opened last)."""

    def read(index: int) -> float:
        try:
            return float(usage()[index])
        except Exception:  # a closed pool: no value rather than a failed scrape
            return math.nan

    for index, state in enumerate(("open", "idle", "max")):
        db_pool_connections.labels(name, state).set_function(functools.partial(read, index))


def exposition() -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(REGISTRY)
