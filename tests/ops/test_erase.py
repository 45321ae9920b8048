"""erase: a scope, an agent's events or a tenant, from PostgreSQL, Redis and the facts, audited, and never
another tenant's data."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.ops.erase import erase
from mcp_shared_memory.runtime import Connections, Runtime
from mcp_shared_memory.stores.audit import PostgresAuditLog
from mcp_shared_memory.stores.erasure import ErasureTarget, erase_qdrant
from mcp_shared_memory.stores.facts_qdrant import QdrantFactsStore

from ..conftest import Backdoor

pytestmark = pytest.mark.anyio
ALICE, BOB = Scope("user", "alice"), Scope("user", "bob")
EVERYONE = ("user:alice", "user:bob", "workspace:*")


async def seed(memory: SharedMemory, principal: Principal) -> None:
    for text in ("Auth uses OAuth2 PKCE", "The deploy window is Tuesday"):
        await memory.write_event(principal, text, scope="user:alice")
    await memory.write_event(principal, "Bob prefers dark mode", scope="user:bob")
    await memory.store_fact(principal, "Auth uses PKCE", scope="user:alice")
    await memory.get_recent_shared(principal, scope="user:alice")  # cached in Redis


async def keys(backdoor: Backdoor, tenant: str) -> list[str]:
    return [k async for k in backdoor.redis.scan_iter(match=f"{backdoor.keys.prefix}:{{{tenant}:*")]


async def facts(backdoor: Backdoor, tenant: str) -> int:
    return int(await backdoor.db.fetchval("SELECT count(*) FROM semantic_facts WHERE tenant_id = $1", tenant))


async def test_erasing_a_users_scope_removes_it_everywhere_and_nothing_else(
    runtime: Runtime, memory: SharedMemory, connections: Connections, backdoor: Backdoor, tenant: str,
    other_tenant: Principal,
) -> None:  # fmt: skip
    alice = Principal(tenant=tenant, agent_id="research-1", allowed_scopes=EVERYONE, default_scope=ALICE)
    await seed(memory, alice)
    await seed(memory, other_tenant)
    assert await keys(backdoor, tenant)

    report = await erase(runtime.settings, connections, ErasureTarget(tenant, ALICE))

    assert (report.events, report.facts) == (2, 1) and report.redis_keys >= 1
    assert await backdoor.episodic.count(tenant, ALICE) == 0
    assert await backdoor.episodic.count(tenant, BOB) == 1
    assert await facts(backdoor, tenant) == 0
    assert not [k for k in await keys(backdoor, tenant) if ":user:alice}" in k]
    assert await backdoor.episodic.count(other_tenant.tenant, ALICE) == 2  # the other tenant is untouched
    assert await facts(backdoor, other_tenant.tenant) == 1
    assert [k for k in await keys(backdoor, other_tenant.tenant) if ":user:alice}" in k]
    assert await memory.get_recent_shared(alice) == []  # no cached copy answers
    audit = await PostgresAuditLog(connections.db).query(tenant=tenant, target="user:alice")
    assert [(r.method, r.result_count, r.agent_type) for r in audit] == [("erase", 2, "operator")]


async def test_erasing_an_agent_keeps_the_others_events_and_facts(
    runtime: Runtime, memory: SharedMemory, connections: Connections, backdoor: Backdoor, tenant: str
) -> None:
    research = Principal(tenant=tenant, agent_id="research-1", allowed_scopes=EVERYONE, default_scope=ALICE)
    code = Principal(tenant=tenant, agent_id="code-1", allowed_scopes=EVERYONE, default_scope=ALICE)
    await memory.write_event(research, "research notes on auth")
    await memory.write_event(code, "code notes on auth")
    await memory.store_fact(code, "Only code-1 says the cache is Redis")
    shared = await memory.store_fact(research, "Auth uses PKCE")
    await memory.store_fact(code, "Auth uses PKCE")

    report = await erase(runtime.settings, connections, ErasureTarget(tenant, None, "code-1"))

    assert (report.events, report.facts) == (1, 1)
    assert [e.agent_id for e in await memory.get_recent_shared(research)] == ["research-1"]
    left = await memory.search_facts(research, "Auth uses PKCE", min_similarity=-1)
    assert [(f.id, f.source_agents) for f in left] == [(shared.fact.id, ["research-1"])]


async def test_erasing_a_tenant_removes_its_workspaces_tokens_and_keys(
    runtime: Runtime, memory: SharedMemory, connections: Connections, backdoor: Backdoor, tenant: str,
    other_tenant: Principal,
) -> None:  # fmt: skip
    alice = Principal(tenant=tenant, agent_id="research-1", allowed_scopes=EVERYONE, default_scope=ALICE)
    await seed(memory, alice)
    await memory.create_workspace(alice, "Ship v2", [])
    await memory.create_workspace(other_tenant, "Ship v2", [])
    await runtime.tokens.create(tenant=alice.tenant, agent_id="a", allowed_scopes=["user:alice"])

    report = await erase(runtime.settings, connections, ErasureTarget(alice.tenant))

    assert (report.workspaces, report.tokens) == (1, 1)
    assert await keys(backdoor, alice.tenant) == []
    assert await memory.list_workspaces(alice) == []
    assert await runtime.tokens.list(tenant=alice.tenant) == []
    assert len(await memory.list_workspaces(other_tenant)) == 1


async def test_qdrant_facts_are_erased_per_tenant_and_scope(connections: Connections) -> None:
    client = AsyncQdrantClient(location=":memory:")
    embedder = connections.embedder
    store = QdrantFactsStore(client, model_id=embedder.model_id, dimension=embedder.dimension)
    await store.open()
    tenant, other = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    for owner in (tenant, other):
        for scope, agents, text in ((ALICE, ["a"], "Auth uses PKCE"), (BOB, ["a", "b"], "Bob likes tea"),
                                    (BOB, ["b"], "Bob runs Linux")):  # fmt: skip
            vector = np.asarray(await embedder.embed(text))
            await store.upsert(owner, scope, text, vector, source_event_ids=[], source_agents=agents,
                               duplicate_floor=0.99)  # fmt: skip

    assert await erase_qdrant(client, ErasureTarget(tenant, ALICE)) == 1
    assert await erase_qdrant(client, ErasureTarget(tenant, None, "a")) == 0  # "Bob likes tea" is also b's
    bob = await store.search(tenant, BOB, await embedder.embed("Bob"), query="Bob", top_k=10, min_similarity=-1)
    assert sorted((f.fact, tuple(f.source_agents)) for f in bob) == [
        ("Bob likes tea", ("b",)),
        ("Bob runs Linux", ("b",)),
    ]
    assert await erase_qdrant(client, ErasureTarget(tenant)) == 2
    left = await store.search(other, ALICE, await embedder.embed("Auth"), query="Auth", top_k=10, min_similarity=-1)
    assert [f.fact for f in left] == ["Auth uses PKCE"]
    await store.close()
