"""Reads of one scope cost what that scope holds, not what the whole table holds.

A scope whose events are older than everyone else's (a quiet user among busy tenants) is the case a planner
gets wrong: walking an index of the whole log newest first looks cheap when it believes the scope's events
are everywhere, and it reads every newer event of every other scope before the first one that matches.
"""

from __future__ import annotations

import json
from array import array
from typing import Any

import pytest

from mcp_shared_memory.embeddings import Embedder
from mcp_shared_memory.event_filter import EventFilter
from mcp_shared_memory.models import Scope
from mcp_shared_memory.runtime import Connections
from mcp_shared_memory.stores.bulk import EventRow, analyze_events, copy_events
from mcp_shared_memory.stores.episodic import SELECT_RECENT, SELECT_SINCE
from mcp_shared_memory.stores.event_search import FILTERED_NEWEST, FILTERED_SINCE, SEARCH_LEXICAL, filter_args

from .conftest import event_rows, fresh_id

pytestmark = pytest.mark.anyio

OLD_EVENTS = 400
NEIGHBOURS = 4  # other tenants with a scope of the same name, written after
NEWER_EVENTS = 4000  # the same tenant's busy scope, written last
MOST_PAGES = 60  # a read of 20 events touches a handful; the whole table is hundreds


def rows(tenant: str, scope_id: str, n: int, embedder: Embedder) -> list[EventRow]:
    # Embedded already (one vector for all), so that the embedding queue has nothing to do for them.
    vector = array("f", [1.0] + [0.0] * (embedder.dimension - 1))
    texts = [f"note {i} of {scope_id}" for i in range(n)]
    return event_rows(tenant, Scope("user", scope_id), texts, vectors=[vector] * n, model_id=embedder.model_id)


async def pages_read(connections: Connections, sql: str, *args: Any) -> int:
    async with connections.db.cross_tenant() as conn:
        plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {sql}", *args))[0]["Plan"]
    return int(plan["Shared Hit Blocks"]) + int(plan["Shared Read Blocks"])


async def test_reading_a_quiet_scope_does_not_walk_the_newer_events_of_others(connections: Connections) -> None:
    tenant = fresh_id("quiet")
    await copy_events(connections.db, rows(tenant, "alice", OLD_EVENTS, connections.embedder))
    for i in range(NEIGHBOURS):
        await copy_events(connections.db, rows(f"{tenant}-neighbour-{i}", "alice", OLD_EVENTS, connections.embedder))
    await copy_events(connections.db, rows(tenant, "busy", NEWER_EVENTS, connections.embedder))
    await analyze_events(connections.db)

    scope_args = (tenant, "user", "alice", 0.0)
    filters = filter_args(tenant, Scope("user", "alice"), EventFilter(agent_ids=["bulk-1"]))
    reads = {
        "recent": (SELECT_RECENT, *scope_args, 20),
        "since a cursor": (SELECT_SINCE, *scope_args, 0, 20),
        "filtered recent": (FILTERED_NEWEST, *filters, 20),
        "filtered since a cursor": (FILTERED_SINCE, *filters, 0, 20),
    }
    read = {name: await pages_read(connections, sql, *args) for name, (sql, *args) in reads.items()}
    assert all(pages <= MOST_PAGES for pages in read.values()), read


def index_rows(plan: dict[str, Any], index_part: str) -> int:
    """Row pointers that the plan's scans of indexes named with ``index_part`` returned."""
    own = int(plan["Actual Rows"]) if index_part in plan.get("Index Name", "") else 0
    return own + sum(index_rows(child, index_part) for child in plan.get("Plans", []))


@pytest.mark.parametrize("rank", ["idf", "ts_rank"])
async def test_the_full_text_half_reads_only_the_scopes_postings(connections: Connections, rank: str) -> None:
    """A word every scope holds costs a search the postings of its own scope, under row-level security."""
    tenant = fresh_id("postings")
    await copy_events(connections.db, rows(tenant, "alice", OLD_EVENTS, connections.embedder))
    await copy_events(connections.db, rows(f"{tenant}-neighbour", "alice", OLD_EVENTS, connections.embedder))
    await copy_events(connections.db, rows(tenant, "busy", NEWER_EVENTS, connections.embedder))
    await analyze_events(connections.db)

    args = (*filter_args(tenant, Scope("user", "alice"), EventFilter()), "note of alice", 30)
    async with connections.db.tenant(tenant, reads_only=True) as conn:
        explained = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {SEARCH_LEXICAL[rank]}", *args)
        found = await conn.fetch(SEARCH_LEXICAL[rank], *args)
    assert len(found) == 30
    assert 0 < index_rows(json.loads(explained)[0]["Plan"], "lexemes") <= OLD_EVENTS
