"""Limits and quotas below the MCP layer, on the real stores: the workspace context cap (atomic), the tenant
event quota, the Redis token bucket shared by replicas (and failing open), and the response budget."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence

import anyio
import pytest

from mcp_shared_memory.errors import InvalidInput, QuotaExceeded, RateLimited, ResultTooLarge
from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.server.limits import ResponseBudget, json_size
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores import rate_limit
from mcp_shared_memory.stores.rate_limit import RedisRateLimiter

from .conftest import isolated
from .faults import faulty_redis_runtime

pytestmark = pytest.mark.anyio

CONTEXT_CAP = 16_384


@pytest.fixture
async def capped(settings: Settings, connections: Connections) -> AsyncIterator[Runtime]:
    """A runtime with the smallest workspace context cap and a tenant quota of 3 events."""
    changed = isolated(settings, max_workspace_context_bytes=CONTEXT_CAP, tenant_quota_events=3)
    async with open_runtime(changed, connections=connections) as opened:
        yield opened


# workspace context


async def test_a_patch_growing_the_context_past_its_cap_changes_nothing(capped: Runtime, alice: Principal) -> None:
    memory = capped.memory
    workspace = await memory.create_workspace(alice, "cap the context", context={"notes": "x" * 10_000})
    with pytest.raises(InvalidInput, match="MSM_MAX_WORKSPACE_CONTEXT_BYTES") as refused:
        await memory.update_workspace(alice, workspace.id, status="paused", context={"more": "y" * 10_000})
    assert "nothing was changed" in refused.value.message
    after = await memory.get_workspace(alice, workspace.id)
    assert after.context == {"notes": "x" * 10_000} and after.status == "active"

    # Overwriting a bulky key makes room again.
    shrunk = await memory.update_workspace(alice, workspace.id, context={"notes": None, "more": "y" * 10_000})
    assert shrunk.context == {"notes": None, "more": "y" * 10_000}


async def test_two_concurrent_patches_cannot_both_pass_the_context_cap(capped: Runtime, alice: Principal) -> None:
    """Each patch fits alone, not both: the cap is checked in the UPDATE itself, so exactly one wins."""
    memory = capped.memory
    workspace = await memory.create_workspace(alice, "race for the context")
    outcomes: dict[str, str] = {}

    async def patch(key: str) -> None:
        try:
            await memory.update_workspace(alice, workspace.id, context={key: key * 10_000})
            outcomes[key] = "ok"
        except InvalidInput:
            outcomes[key] = "refused"

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tasks:
            for key in ("a", "b"):
                tasks.start_soon(patch, key)
    assert sorted(outcomes.values()) == ["ok", "refused"]
    (winner,) = [k for k, v in outcomes.items() if v == "ok"]
    assert (await memory.get_workspace(alice, workspace.id)).context == {winner: winner * 10_000}


# tenant quota


async def test_writes_beyond_the_tenant_quota_are_refused_and_write_nothing(
    capped: Runtime, alice: Principal, other_tenant: Principal
) -> None:
    memory = capped.memory
    for i in range(3):
        assert (await memory.write_event(alice, f"event {i} of the quota")).written
    with pytest.raises(QuotaExceeded, match=r"3 of 3 events.*MSM_TENANT_QUOTA_EVENTS"):
        await memory.write_event(alice, "one event too many")
    with pytest.raises(QuotaExceeded):
        await memory.store_fact(alice, "a fact past the quota")
    with pytest.raises(QuotaExceeded):
        await memory.create_workspace(alice, "a workspace past the quota")

    assert [e.content for e in await memory.get_recent_shared(alice, limit=10)] == [
        "event 2 of the quota", "event 1 of the quota", "event 0 of the quota",
    ]  # fmt: skip
    assert await memory.search_facts(alice, "fact past the quota", min_similarity=-1) == []
    assert await memory.list_workspaces(alice) == []
    assert (await memory.write_event(other_tenant, "another tenant has its own quota")).written


async def test_the_quota_counts_every_replicas_writes(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    common = isolated(settings, tenant_quota_events=3)
    async with open_runtime(common, connections=connections) as a, open_runtime(common, connections=connections) as b:
        await a.memory.write_event(alice, "written through replica A")
        await b.memory.write_event(alice, "written through replica B")
        await a.memory.write_event(alice, "written through replica A again")
        for replica in (a, b):
            with pytest.raises(QuotaExceeded):
                await replica.memory.write_event(alice, "past the shared quota")


async def test_the_quota_holds_while_redis_is_down(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    async with faulty_redis_runtime(isolated(settings, tenant_quota_events=2), connections) as faulty:
        faulty.proxy.cut()
        memory = faulty.runtime.memory
        await memory.write_event(alice, "first while Redis is down")
        await memory.write_event(alice, "second while Redis is down")
        with pytest.raises(QuotaExceeded):
            await memory.write_event(alice, "third while Redis is down")


# rate limit


def limiter_of(runtime: Runtime) -> RedisRateLimiter:
    assert runtime.rate_limiter is not None
    return runtime.rate_limiter


async def test_the_rate_limit_is_one_bucket_shared_by_every_replica(
    settings: Settings, connections: Connections, tenant: str
) -> None:
    common = isolated(settings, rate_limit_per_minute=1, rate_limit_burst=3)
    async with open_runtime(common, connections=connections) as a, open_runtime(common, connections=connections) as b:
        for _ in range(3):
            await limiter_of(a).take(tenant, "agent:busy")
        with pytest.raises(RateLimited, match=r"retry after \d+ s") as limited:
            await limiter_of(b).take(tenant, "agent:busy")
        assert limited.value.retry_after >= 1
        await limiter_of(b).take(tenant, "agent:idle")  # another caller has its own bucket
        await limiter_of(b).take(f"{tenant}-other", "agent:busy")  # and so has the same id in another tenant


async def test_a_call_dearer_than_what_is_left_is_refused_and_takes_nothing(
    settings: Settings, connections: Connections, tenant: str
) -> None:
    changed = isolated(settings, rate_limit_per_minute=1, rate_limit_burst=3)
    async with open_runtime(changed, connections=connections) as runtime:
        limiter = limiter_of(runtime)
        await limiter.take(tenant, "agent:writer", cost=2)
        with pytest.raises(RateLimited):
            await limiter.take(tenant, "agent:writer", cost=2)
        await limiter.take(tenant, "agent:writer", cost=1)  # the refused write took nothing
        with pytest.raises(RateLimited):
            await limiter.take(tenant, "agent:writer", cost=1)


async def allowed_calls(limiters: list[RedisRateLimiter], tenant: str, caller: str, *, most: int) -> int:
    """Calls the limiters let through, taking turns, until every one of them refuses (at most ``most``)."""
    passed, refused_in_a_row, turn = 0, 0, 0
    while refused_in_a_row < len(limiters) and passed < most:
        try:
            await limiters[turn % len(limiters)].take(tenant, caller)
        except RateLimited:
            refused_in_a_row += 1
        else:
            passed, refused_in_a_row = passed + 1, 0
        turn += 1
    return passed


async def test_leased_tokens_never_let_replicas_pass_more_than_the_bucket_holds(
    settings: Settings, connections: Connections, tenant: str
) -> None:
    # a burst of 40 leases 4 tokens a call beyond its own; the refill (1 a minute) adds nothing meanwhile
    common = isolated(settings, rate_limit_per_minute=1, rate_limit_burst=40)
    async with open_runtime(common, connections=connections) as a, open_runtime(common, connections=connections) as b:
        assert await allowed_calls([limiter_of(a), limiter_of(b)], tenant, "agent:shared", most=100) == 40


async def test_an_unspent_lease_goes_back_to_the_bucket(
    settings: Settings, connections: Connections, tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rate_limit, "LEASE_SECONDS", 0.0)  # every lease has expired by the next call
    common = isolated(settings, rate_limit_per_minute=1, rate_limit_burst=40)
    async with open_runtime(common, connections=connections) as a, open_runtime(common, connections=connections) as b:
        await limiter_of(a).take(tenant, "agent:idle-then-back")  # 1 taken, 4 leased to a
        passed_b = await allowed_calls([limiter_of(b)], tenant, "agent:idle-then-back", most=100)
        assert passed_b <= 35  # b never sees a's lease
        passed_a = await allowed_calls([limiter_of(a)], tenant, "agent:idle-then-back", most=100)
        assert 1 + passed_b + passed_a == 40  # a gave its lease back: nothing was lost


async def test_a_busy_caller_asks_redis_once_per_several_calls(
    settings: Settings, connections: Connections, tenant: str
) -> None:
    common = isolated(settings, rate_limit_per_minute=600, rate_limit_burst=120)  # the defaults: leases of 12
    async with open_runtime(common, connections=connections) as runtime:
        limiter = limiter_of(runtime)
        asked = 0
        take = limiter._take

        async def counted(*args: object, **kwargs: object) -> object:
            nonlocal asked
            asked += 1
            return await take(*args, **kwargs)

        limiter._take = counted  # type: ignore[assignment]
        for _ in range(26):
            await limiter.take(tenant, "agent:busy-reader")
        assert asked <= 3


async def test_the_rate_limiter_fails_open_while_redis_is_down(
    settings: Settings, connections: Connections, tenant: str
) -> None:
    changed = isolated(settings, rate_limit_per_minute=1, rate_limit_burst=1, redis_breaker_seconds=0)
    async with faulty_redis_runtime(changed, connections) as faulty:
        limiter = limiter_of(faulty.runtime)
        await limiter.take(tenant, "agent:a")
        with pytest.raises(RateLimited):
            await limiter.take(tenant, "agent:a")
        faulty.proxy.cut()
        for _ in range(5):
            await limiter.take(tenant, "agent:a")  # not enforced: Redis is unreachable
        faulty.proxy.restore()
        with anyio.fail_after(10), pytest.raises(RateLimited):
            while True:  # enforced again once the client has reconnected
                await limiter.take(tenant, "agent:a")


# response budget (pure logic)


def escaped(n: int, unit: str) -> list[str]:
    return [unit * (200 + 37 * (i % 11)) for i in range(n)]


def as_response(items: Sequence[str]) -> str:
    """A result carrying each item twice, once escaped again (as a text block does)."""
    return json.dumps({"items": list(items), "text": "\n".join(json.dumps(i) for i in items)})


@pytest.mark.parametrize("unit", ["plain text ", '"\\\x01\u2028', "\U0001f600é"])
def test_a_list_is_cut_to_a_prefix_that_fits_and_nearly_the_longest(unit: str) -> None:
    budget = ResponseBudget(65_536)
    items = escaped(400, unit)
    kept = budget.fit(items, lambda k: list(k), lambda k: json_size(as_response(k)), noun="items")
    assert kept == items[: len(kept)]
    assert json_size(as_response(kept)) <= budget.max_bytes
    low, high = 0, len(items)  # the longest prefix that fits, by bisection (sizes grow with the prefix)
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (
            (middle, high) if json_size(as_response(items[:middle])) <= budget.max_bytes - 256 else (low, middle - 1)
        )
    assert len(kept) >= 0.9 * low


def test_a_list_that_fits_is_built_once_and_returned_whole() -> None:
    built: list[int] = []
    items = escaped(5, "small ")

    def build(kept: Sequence[str]) -> list[str]:
        built.append(len(kept))
        return list(kept)

    assert ResponseBudget(65_536).fit(items, build, lambda k: json_size(as_response(k)), noun="items") == items
    assert built == [5]


def test_an_item_too_large_alone_and_an_uncuttable_result_are_refused() -> None:
    budget = ResponseBudget(65_536)
    with pytest.raises(ResultTooLarge, match="MSM_MAX_RESPONSE_BYTES"):
        budget.fit(["x" * 70_000, "y"], list, lambda k: json_size(as_response(k)), noun="items")
    with pytest.raises(ResultTooLarge, match="65536-byte response limit"):
        budget.check(70_000, "this result")
    budget.check(60_000, "this result")
