"""Writes are acknowledged at commit and embedded afterwards (``embedding_queue.py``): nothing
acknowledged stays unembedded, a search right after a write finds it by meaning, and an embedder that
fails, hangs or refuses one text neither slows writes nor hides events."""

from __future__ import annotations

import os
import signal
import sys
import uuid

import anyio
import pytest

from mcp_shared_memory import metrics
from mcp_shared_memory.embedding_queue import EmbeddingQueue
from mcp_shared_memory.models import Principal
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.bulk import copy_events
from mcp_shared_memory.stores.embedding_backlog import Claimed, PostgresEmbeddingBacklog
from mcp_shared_memory.stores.postgres import PostgresPool

from .conftest import Backdoor, event_rows, isolated
from .faults import eventually, faulty_embedder_runtime

pytestmark = pytest.mark.anyio

ROTATION = "The on-call rotation changes every Monday at 9am"


async def embedded(backdoor: Backdoor, *event_ids: uuid.UUID | None) -> bool:
    count = await backdoor.db.fetchval(
        "SELECT count(*) FROM shared_episodic_memories WHERE id = ANY($1::uuid[]) AND embedding IS NOT NULL",
        list(event_ids),
    )
    return int(count) == len(event_ids)


async def rejection_of(backdoor: Backdoor, event_id: uuid.UUID | None) -> str | None:
    reason: str | None = await backdoor.db.fetchval(
        "SELECT embedding_error FROM shared_episodic_memories WHERE id = $1", event_id
    )
    return reason


@pytest.fixture(autouse=True)
async def no_events_left_waiting_by_other_tests(settings: Settings, connections: Connections) -> None:
    """The queue embeds every tenant's waiting events, oldest first, and earlier tests of the session leave
    some (their runtimes closed before embedding them; measured: 268 to 650 by the time this module runs).
    Embedded first, so each test here waits for its own events only."""
    async with open_runtime(isolated(settings), connections=connections) as runtime:
        with anyio.fail_after(120):
            await runtime.embeddings.drain()


async def test_a_write_is_acknowledged_without_waiting_for_the_model(
    settings: Settings, connections: Connections, alice: Principal, backdoor: Backdoor
) -> None:
    async with faulty_embedder_runtime(isolated(settings), connections) as (runtime, embedder):
        embedder.hangs = True
        with anyio.fail_after(5):
            written = await runtime.memory.write_event(alice, "Deploy of payments-api v2.3.1 finished")
        assert written.status == "written"
        assert not await embedded(backdoor, written.event_id)
        (hit,) = await runtime.memory.search_shared(alice, "payments-api v2.3.1", mode="lexical")
        assert hit.id == written.event_id


async def test_every_acknowledged_write_is_embedded_without_anyone_asking(
    settings: Settings, connections: Connections, alice: Principal, backdoor: Backdoor
) -> None:
    before = _observed_embeddings()
    async with faulty_embedder_runtime(isolated(settings), connections) as (runtime, _):
        written = [
            await runtime.memory.write_event(alice, f"finding {i}: the cache misses on key k{i}") for i in range(30)
        ]
        await eventually(lambda: embedded(backdoor, *(w.event_id for w in written)))
    assert _observed_embeddings() - before >= 1  # the queue's latency histogram moved (msm_embedding_queue_seconds)


def _observed_embeddings() -> float:
    value = metrics.REGISTRY.get_sample_value("msm_embedding_queue_seconds_count")
    return value or 0.0


async def test_a_search_right_after_a_write_finds_it_by_meaning(
    settings: Settings, connections: Connections, alice: Principal, backdoor: Backdoor
) -> None:
    """The model was down when the event was written (so the queue could not embed it); it is back when
    the search starts: the search embeds the scope's waiting event before ranking."""
    async with faulty_embedder_runtime(isolated(settings), connections) as (runtime, embedder):
        embedder.down = True
        written = await runtime.memory.write_event(alice, ROTATION)
        embedder.down = False
        hits = await runtime.memory.search_shared(alice, "when do we switch who is on call?", mode="semantic")
        assert [h.id for h in hits] == [written.event_id] and hits.degraded is None
        assert await embedded(backdoor, written.event_id)


async def test_an_embedder_outage_degrades_search_to_words_and_it_says_so(
    settings: Settings, connections: Connections, alice: Principal, backdoor: Backdoor
) -> None:
    async with faulty_embedder_runtime(isolated(settings), connections) as (runtime, embedder):
        memory = runtime.memory
        embedder.down = True
        written = await memory.write_event(alice, ROTATION)
        assert written.status == "written"

        hits = await memory.search_shared(alice, "on-call rotation Monday")
        assert [h.id for h in hits] == [written.event_id]
        assert hits.degraded is not None and "embedding model is unavailable" in hits.degraded
        assert hits[0].similarity is None and hits[0].lexical
        # Waiting, not refused: an outage never marks an event as rejected.
        assert await rejection_of(backdoor, written.event_id) is None

        embedder.down = False  # embedded within seconds of the model's return, by the queue alone
        await eventually(lambda: embedded(backdoor, written.event_id), seconds=10)
        hits = await memory.search_shared(alice, "when does on-call rotate?", mode="semantic")
        assert [h.id for h in hits] == [written.event_id] and hits.degraded is None


async def test_a_text_the_model_refuses_is_isolated_reported_and_retried_on_request(
    settings: Settings, connections: Connections, alice: Principal, backdoor: Backdoor
) -> None:
    backlog = PostgresEmbeddingBacklog(connections.db)
    async with faulty_embedder_runtime(isolated(settings), connections) as (runtime, embedder):
        memory = runtime.memory
        embedder.rejects = lambda text: len(text) > 150  # an oversized input
        refused = await memory.write_event(alice, "REJECTED-BY-ENDPOINT " + "字" * 200)
        normal = await memory.write_event(alice, "The staging cluster moved to eu-west-1")

        await eventually(lambda: embedded(backdoor, normal.event_id))
        await eventually(lambda: rejection_of(backdoor, refused.event_id))
        assert "rejected the input" in (await rejection_of(backdoor, refused.event_id) or "")
        assert refused.event_id in [r.event_id for r in await backlog.rejected(limit=1000)]
        assert (await backlog.counts()).rejected >= 1
        # A refused event is not waited for by searches, which still find it by its words.
        hits = await memory.search_shared(alice, "REJECTED-BY-ENDPOINT")
        assert hits[0].id == refused.event_id and hits.degraded is None

        embedder.rejects = lambda text: False
        assert await backlog.retry_rejected() >= 1
        runtime.embeddings.notify()
        await eventually(lambda: embedded(backdoor, refused.event_id))
        assert await rejection_of(backdoor, refused.event_id) is None


async def test_events_left_by_a_writer_that_died_are_embedded_by_the_next_process(
    settings: Settings, connections: Connections, alice: Principal, backdoor: Backdoor
) -> None:
    """A writer that died after its commit leaves events without a vector, some under its claim's lease:
    a process that polls later embeds the unclaimed ones at once and the claimed ones when the lease ends."""
    async with faulty_embedder_runtime(isolated(settings), connections) as (runtime, embedder):
        embedder.down = True  # this process stands for the writer: it commits, never embeds
        unclaimed = await runtime.memory.write_event(alice, "the writer died before embedding this")
        claimed = await runtime.memory.write_event(alice, "and this one was under its lease")
    await backdoor.db.execute(
        "UPDATE shared_episodic_memories SET embedding_retry_at = now() + interval '1 second' WHERE id = $1",
        claimed.event_id,
    )
    async with faulty_embedder_runtime(isolated(settings), connections):
        await eventually(lambda: embedded(backdoor, unclaimed.event_id, claimed.event_id), seconds=10)


async def test_a_writer_killed_right_after_its_acknowledgements_loses_no_embedding(
    backend_env: dict[str, str], runtime: Runtime, alice: Principal, backdoor: Backdoor
) -> None:
    """A real server process acknowledges writes and is SIGKILLed at once, with its events waiting or
    under its claim: this process's queue embeds every one of them (the claim's lease is 10 s at most)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSM_")} | backend_env
    lines = [f"killed-writer finding {i}: shard {i} rebalanced" for i in range(20)]
    command = [sys.executable, "-m", "tests.writer_child", alice.tenant]
    async with await anyio.open_process(command, env=env, cwd=os.getcwd()) as child:
        assert child.stdin is not None and child.stdout is not None
        with anyio.fail_after(60):
            assert (await child.stdout.receive()).strip() == b"ready"
        await child.stdin.send("".join(f"{line}\n" for line in lines).encode())
        acknowledged = 0
        with anyio.fail_after(60):
            while acknowledged < len(lines):
                acknowledged += len((await child.stdout.receive()).split())
        child.send_signal(signal.SIGKILL)
        await child.wait()
    ids = await backdoor.db.fetch(
        "SELECT id FROM shared_episodic_memories WHERE tenant_id = $1 AND content = ANY($2::text[])",
        alice.tenant, lines,
    )  # fmt: skip
    assert len(ids) == len(lines)
    await eventually(lambda: embedded(backdoor, *(r["id"] for r in ids)), seconds=45)


async def test_a_hanging_model_degrades_search_within_the_wait(
    settings: Settings, connections: Connections, alice: Principal
) -> None:
    async with faulty_embedder_runtime(isolated(settings, embedding_catch_up_seconds=0.5), connections) as (
        runtime,
        embedder,
    ):
        written = await runtime.memory.write_event(alice, "Rotated the TLS certificate of edge-proxy-7")
        embedder.hangs = True
        with anyio.fail_after(5):
            hits = await runtime.memory.search_shared(alice, "edge-proxy-7 certificate")
        assert [h.id for h in hits] == [written.event_id]
        assert hits.degraded is not None and "did not answer within 0.5 s" in hits.degraded


class CountingBacklog(PostgresEmbeddingBacklog):
    def __init__(self, db: PostgresPool) -> None:
        super().__init__(db)
        self.claimed: list[int] = []

    async def claim(self, *, limit: int, lease_seconds: float) -> list[Claimed]:
        claimed = await super().claim(limit=limit, lease_seconds=lease_seconds)
        self.claimed.append(len(claimed))
        return claimed


async def test_a_drain_claims_until_a_claim_comes_back_short(connections: Connections, alice: Principal) -> None:
    """Six waiting events and batches of four: two claims (4, then 2). The short one says nothing else was
    claimable, so no third, empty claim follows (one round trip less per wake of a lone writer's queue)."""
    scope = alice.default_scope
    assert scope is not None
    texts = [f"pending note {i} about the payments-api cache" for i in range(6)]
    rows = event_rows(alice.tenant, scope, texts)
    await copy_events(connections.db, rows)
    backlog = CountingBacklog(connections.db)
    queue = EmbeddingQueue(
        backlog=backlog, scoped=PostgresEmbeddingBacklog(connections.requests_db), embedder=connections.embedder,
        catch_up_timeout=1.0, batch=4,
    )  # fmt: skip
    with anyio.fail_after(60):
        assert await queue.drain() >= 6
    # [4, 2] here; events an earlier test left (a lease running out) can only add full claims before it.
    *before_last, _ = backlog.claimed
    assert before_last and all(n == 4 for n in before_last), backlog.claimed
    count = await connections.db.fetchval(
        "SELECT count(*) FROM shared_episodic_memories WHERE id = ANY($1::uuid[]) AND embedding IS NOT NULL",
        [r.id for r in rows],
    )
    assert count == 6
