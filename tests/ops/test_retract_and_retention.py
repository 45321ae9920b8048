"""retract_event (an agent takes back its own event) and the retention sweep, on the real stores."""

from __future__ import annotations

import uuid

import anyio
import pytest
from mcp import Client

from mcp_shared_memory.errors import AccessDenied, InvalidInput, NotFound
from mcp_shared_memory.memory import SharedMemory
from mcp_shared_memory.models import EventRef, Principal, Scope, event_ref
from mcp_shared_memory.runtime import Connections, Runtime, open_runtime
from mcp_shared_memory.settings import Settings
from mcp_shared_memory.stores.messages import BusMessage, EventWritten, Topic

from ..conftest import Backdoor, isolated
from ..faults import eventually
from ..server.mcp_clients import in_process_server

pytestmark = pytest.mark.anyio
ALICE = Scope("user", "alice")


async def test_an_agent_retracts_its_own_event_and_subscribers_hear_of_it(
    runtime: Runtime, memory: SharedMemory, backdoor: Backdoor, alice: Principal
) -> None:
    kept = await memory.write_event(alice, "The deploy window is Tuesday")
    wrong = await memory.write_event(alice, "The staging password is hunter2")
    assert [e.id for e in await memory.get_recent_shared(alice)] == [wrong.event_id, kept.event_id]  # cached
    heard: list[BusMessage] = []
    got = anyio.Event()

    async def listener(message: BusMessage) -> None:
        heard.append(message)
        got.set()

    remove = runtime.bus.add_listener(listener)
    async with runtime.bus.subscription(Topic(alice.tenant, ALICE)):
        retracted = await memory.retract_event(alice, str(wrong.event_id))
        with anyio.fail_after(10):
            await got.wait()
    remove()

    assert retracted.content == "The staging password is hunter2"
    assert isinstance(heard[0], EventWritten) and heard[0].event_id == wrong.event_id
    assert [e.id for e in await memory.get_recent_shared(alice)] == [kept.event_id]
    assert await backdoor.episodic.count(alice.tenant, ALICE) == 1


async def test_another_agents_event_is_refused_and_other_tenants_see_nothing(
    memory: SharedMemory, backdoor: Backdoor, alice: Principal, alice_coder: Principal, other_tenant: Principal
) -> None:
    written = await memory.write_event(alice, "Auth uses OAuth2 PKCE")
    event_id = str(written.event_id)

    with pytest.raises(AccessDenied, match="written by agent research-1"):
        await memory.retract_event(alice_coder, event_id)
    with pytest.raises(NotFound, match="does not exist"):
        await memory.retract_event(other_tenant, event_id)
    assert await backdoor.episodic.count(alice.tenant, ALICE) == 1

    admin = Principal(tenant=alice.tenant, agent_id="lead-1", allowed_scopes=("user:alice=rwa",))
    assert (await memory.retract_event(admin, event_id, scope="user:alice")).id == written.event_id
    assert await backdoor.episodic.count(alice.tenant, ALICE) == 0


async def test_the_tool_retracts_and_refuses_with_clear_messages(
    runtime: Runtime, memory: SharedMemory, alice: Principal, alice_coder: Principal
) -> None:
    mine = await memory.write_event(alice_coder, "a note by code-1")
    async with Client(in_process_server(runtime, alice)) as client:
        written = await client.call_tool("write_event", {"content": "a mistake"})
        done = await client.call_tool("retract_event", {"event_id": written.structured_content["event_id"]})
        assert not done.is_error and done.structured_content["content"] == "a mistake"
        refused = await client.call_tool("retract_event", {"event_id": str(mine.event_id)})
        assert refused.is_error and "only its own events" in refused.content[0].text
        bad = await client.call_tool("retract_event", {"event_id": "not-a-uuid"})
        assert bad.is_error and "the seq a listing shows (#42)" in bad.content[0].text
    assert [e.content for e in await memory.get_recent_shared(alice)] == ["a note by code-1"]


async def test_retention_deletes_only_old_events_of_the_configured_scope_type(
    settings: Settings, connections: Connections, backdoor: Backdoor, alice: Principal
) -> None:
    changed = isolated(settings, retention_user_days=5)
    async with open_runtime(changed, connections=connections) as runtime:
        memory = runtime.memory
        workspace = await memory.create_workspace(alice, "Ship v2", [])
        in_workspace = f"workspace:{workspace.id}"
        old_user = await memory.write_event(alice, "an old note about alice")
        new_user = await memory.write_event(alice, "a new note about alice")
        old_ws = await memory.write_event(alice, "an old workspace note", scope=in_workspace)
        for written in (old_user, old_ws):
            await backdoor.db.execute(
                "UPDATE shared_episodic_memories SET created_at = now() - interval '10 days' WHERE id = $1",
                written.event_id,
            )
        assert len(await memory.get_recent_shared(alice)) == 2  # both cached
        # The sweep skips rows locked at that moment (SKIP LOCKED): let the embedding queue finish with them.
        ids = [old_user.event_id, new_user.event_id, old_ws.event_id]
        await eventually(lambda: _all_embedded(backdoor, ids))

        assert await runtime.maintenance.expire_events() >= 1

        assert [e.id for e in await memory.get_recent_shared(alice)] == [new_user.event_id]
        ws_events = await memory.get_recent_shared(alice, scope=in_workspace)
        assert old_ws.event_id in [e.id for e in ws_events]


async def _all_embedded(backdoor: Backdoor, ids: list[uuid.UUID | None]) -> bool:
    waiting = await backdoor.db.fetchval(
        "SELECT count(*) FROM shared_episodic_memories WHERE id = ANY($1::uuid[]) AND embedding IS NULL", ids
    )
    return waiting == 0


async def test_no_retention_configured_deletes_nothing(runtime: Runtime) -> None:
    assert await runtime.maintenance.expire_events() == 0


async def test_an_event_is_retracted_by_the_seq_its_listing_shows(
    runtime: Runtime, memory: SharedMemory, backdoor: Backdoor, alice: Principal, alice_coder: Principal
) -> None:
    """The compact text names events by seq (``#42``), not id: a model that only reads it can still retract."""
    theirs = await memory.write_event(alice_coder, "a note by code-1")
    async with Client(in_process_server(runtime, alice)) as client:
        await client.call_tool("write_event", {"content": "kept"})
        await client.call_tool("write_event", {"content": "a mistake"})
        listing = await client.call_tool("get_recent_shared", {})
        mistake = next(e for e in listing.structured_content["events"] if e["content"] == "a mistake")
        assert f"#{mistake['seq']} " in listing.content[0].text
        # As the structured listing holds it (a number), then as the text shows it.
        done = await client.call_tool("retract_event", {"event_id": mistake["seq"]})
        assert not done.is_error and done.structured_content["id"] == mistake["id"]
        again = await client.call_tool("retract_event", {"event_id": f"#{mistake['seq']}"})
        assert again.is_error and "does not exist" in again.content[0].text
        assert theirs.event is not None
        refused = await client.call_tool("retract_event", {"event_id": f"#{theirs.event.seq}"})
        assert refused.is_error and "only its own events" in refused.content[0].text
    assert sorted(e.content for e in await memory.get_recent_shared(alice)) == ["a note by code-1", "kept"]


async def test_a_seq_names_an_event_only_within_the_scope_and_tenant(
    memory: SharedMemory, backdoor: Backdoor, alice: Principal, other_tenant: Principal
) -> None:
    written = (await memory.write_event(alice, "Auth uses OAuth2 PKCE")).event
    assert written is not None
    with pytest.raises(NotFound, match="does not exist"):
        await memory.retract_event(other_tenant, written.seq)
    elsewhere = Principal(tenant=alice.tenant, agent_id=alice.agent_id, allowed_scopes=("user:bob",))
    with pytest.raises(NotFound, match="does not exist in scope user:bob"):
        await memory.retract_event(elsewhere, f"#{written.seq}", scope="user:bob")
    assert await backdoor.episodic.count(alice.tenant, ALICE) == 1


EVENT_ID = "0d0c9b9e-3c1e-4f5a-9a59-0b8f3a5e7c11"


@pytest.mark.parametrize(
    ("text", "named"),
    [("#42", 42), ("42", 42), (" #7 ", 7), (42, 42), (EVENT_ID, uuid.UUID(EVENT_ID)), (uuid.UUID(EVENT_ID),) * 2],
)
def test_an_event_is_named_by_its_id_or_its_seq(text: str | EventRef, named: EventRef) -> None:
    assert event_ref(text) == named


@pytest.mark.parametrize("text", ["", "#", "#-1", "4.2", "1e3", "##4", "# 4", "9" * 19, "seq 42"])
def test_anything_else_is_refused_naming_both_forms(text: str) -> None:
    with pytest.raises(InvalidInput, match=r"the event_id write_event returned, or the seq a listing shows \(#42\)"):
        event_ref(text)
