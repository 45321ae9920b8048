"""Consolidation of the episodic log into shared facts: offline rules, an LLM, locking, crash safety."""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

import anyio
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from mcp_shared_memory.consolidation import ChatExtractor, RuleExtractor
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import Runtime

from .conftest import Backdoor, fresh_id
from .faults import eventually
from .local_http import serve_app

pytestmark = pytest.mark.anyio

ALICE = Scope("user", "alice")


async def facts_of(backdoor: Backdoor, tenant: str, scope: Scope = ALICE) -> list[dict[str, Any]]:
    rows = await backdoor.db.fetch(
        "SELECT fact, confirmations, source_agents, cardinality(source_event_ids) AS sources FROM semantic_facts "
        "WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 ORDER BY fact",
        tenant, scope.type, scope.id,
    )  # fmt: skip
    return [dict(r) for r in rows]


async def pending_count(backdoor: Backdoor, tenant: str) -> int:
    return await backdoor.db.fetchval(
        "SELECT count(*) FROM shared_episodic_memories WHERE tenant_id = $1 AND NOT consolidated", tenant
    )


async def under(backdoor: Backdoor, tenant: str, count: int) -> bool:
    return await pending_count(backdoor, tenant) < count


async def test_important_fact_like_events_become_facts_and_all_are_marked(
    runtime: Runtime, memory: SharedMemory, alice: Principal, alice_coder: Principal, backdoor: Backdoor
) -> None:
    await memory.write_event(alice, "The billing API rejects requests without an idempotency header", importance=0.9)
    await memory.write_event(
        alice_coder, "Billing API rejects requests that lack an idempotency header.", importance=0.8
    )
    await memory.write_event(alice, "Staging runs PostgreSQL 16", event_type="decision", importance=0.7)
    await memory.write_event(alice, "ran the linter", importance=0.2)
    await memory.write_event(alice, "Hello there", event_type="chat", importance=0.9)

    report = await runtime.maintenance.consolidator.run(tenant=alice.tenant)

    assert (report.events, report.stored, report.confirmed) == (5, 2, 1)
    facts = await facts_of(backdoor, alice.tenant)
    assert [(f["fact"], f["confirmations"], sorted(f["source_agents"])) for f in facts] == [
        ("Staging runs PostgreSQL 16", 1, ["research-1"]),
        ("The billing API rejects requests without an idempotency header", 2, ["code-1", "research-1"]),
    ]
    assert await pending_count(backdoor, alice.tenant) == 0
    stamped = await backdoor.db.fetchval(
        "SELECT bool_and(consolidated_at IS NOT NULL) FROM shared_episodic_memories WHERE tenant_id = $1", alice.tenant
    )
    assert stamped
    hits = await memory.search_facts(alice, "what does billing require?")
    assert hits and "idempotency" in hits[0].fact

    again = await runtime.maintenance.consolidator.run(tenant=alice.tenant)
    assert again.events == 0
    assert await facts_of(backdoor, alice.tenant) == facts


async def test_a_scope_locked_by_another_process_is_skipped(
    runtime: Runtime, memory: SharedMemory, alice: Principal, backdoor: Backdoor
) -> None:
    await memory.write_event(alice, "The cache TTL is one hour", importance=0.9)
    lock_key = f"{alice.tenant}:{ALICE}"
    async with backdoor.db.connection() as other:
        assert await other.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 7340003))", lock_key)
        busy = await runtime.maintenance.consolidator.consolidate_scope(alice.tenant, ALICE)
        await other.execute("SELECT pg_advisory_unlock(hashtextextended($1, 7340003))", lock_key)

    assert busy.skipped_busy == 1 and busy.events == 0
    assert await pending_count(backdoor, alice.tenant) == 1
    done = await runtime.maintenance.consolidator.consolidate_scope(alice.tenant, ALICE)
    assert done.events == 1 and done.stored == 1


async def seed_identical_events(backdoor: Backdoor, tenants: list[str], *, distinct: int, repeats: int) -> None:
    texts = [f"Service {i} listens on port {8000 + i} and is owned by team {i % 7}" for i in range(distinct)]
    for tenant in tenants:
        await backdoor.bulk_append(tenant, ALICE, texts * repeats, importance=0.9)


async def test_killed_midway_then_rerun_equals_an_uninterrupted_run(
    runtime: Runtime, backdoor: Backdoor, backend_env: dict[str, str]
) -> None:
    crashed, reference = fresh_id("crash"), fresh_id("reference")
    await seed_identical_events(backdoor, [crashed, reference], distinct=40, repeats=40)
    total = 1600  # per tenant
    await runtime.maintenance.consolidator.run(tenant=reference)

    env = {k: v for k, v in os.environ.items() if not k.startswith("MSM_")}
    env.update(backend_env, MSM_CONSOLIDATION_BATCH="10")
    command = [sys.executable, "-m", "mcp_shared_memory", "consolidate", "--tenant", crashed]
    async with await anyio.open_process(command, env=env, stdout=None, stderr=None) as child:
        # the first batch of 10 is consolidated (the child's progress is visible only in PostgreSQL)
        await eventually(lambda: under(backdoor, crashed, total), seconds=60)
        child.send_signal(signal.SIGKILL)
        await child.wait()
    left = await pending_count(backdoor, crashed)
    assert 0 < left < total, "the consolidation was not interrupted midway"

    # The killed process's PostgreSQL session holds the scope's lock until the server notices the closed
    # socket (later on a loaded machine): a run meanwhile skips the scope as busy, and says so.
    async def rerun_finds_it_free() -> bool:
        return (await runtime.maintenance.consolidator.run(tenant=crashed)).skipped_busy == 0

    await eventually(rerun_finds_it_free, seconds=30)

    assert await pending_count(backdoor, crashed) == 0
    expected = await facts_of(backdoor, reference)
    assert len(expected) >= 10 and sum(f["sources"] for f in expected) == total
    got = await facts_of(backdoor, crashed)
    assert [(f["fact"], f["confirmations"], f["sources"]) for f in got] == [
        (f["fact"], f["confirmations"], f["sources"]) for f in expected
    ]


async def test_a_chat_model_extracts_facts_with_provenance(
    runtime: Runtime, memory: SharedMemory, alice: Principal
) -> None:
    requests: list[dict[str, Any]] = []

    async def completions(request: Request) -> JSONResponse:
        body = await request.json()
        requests.append(body)
        seqs = [int(line.split()[0].removeprefix("seq=")) for line in body["messages"][1]["content"].splitlines()]
        answer = {"facts": [{"fact": "Deploys need two approvals", "events": seqs[:2]}]}
        return JSONResponse({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 0, "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "```json\n" + json.dumps(answer) + "\n```"}}],
        })  # fmt: skip

    first = await memory.write_event(alice, "Alice said deploys need a second reviewer", importance=0.3)
    second = await memory.write_event(alice, "Bob approved the deploy as the second reviewer", importance=0.3)
    app = Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"])])
    with serve_app(app) as base:
        import openai

        client = openai.AsyncOpenAI(api_key="local", base_url=f"{base}/v1", max_retries=0)
        rules = RuleExtractor(min_importance=0.7, event_types=frozenset({"observation"}))
        extractor = ChatExtractor(client, model="local-llm", fallback=rules)
        report = await runtime.maintenance.consolidator.using(extractor).run(tenant=alice.tenant)

    assert requests and requests[0]["model"] == "local-llm"
    assert (report.events, report.stored) == (2, 1)
    (fact,) = await memory.search_facts(alice, "how many approvals does a deploy need?")
    assert fact.fact == "Deploys need two approvals"
    assert set(fact.source_event_ids) == {first.event_id, second.event_id}


async def test_chat_model_failure_falls_back_to_the_rules(
    runtime: Runtime, memory: SharedMemory, alice: Principal
) -> None:
    await memory.write_event(alice, "The queue is RabbitMQ 3.13", importance=0.9)
    import openai

    client = openai.AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:9/v1", max_retries=0, timeout=2)
    rules = RuleExtractor(min_importance=0.7, event_types=frozenset({"observation"}))
    chat = ChatExtractor(client, model="m", fallback=rules)
    report = await runtime.maintenance.consolidator.using(chat).run(tenant=alice.tenant)

    assert (report.events, report.stored) == (1, 1)
