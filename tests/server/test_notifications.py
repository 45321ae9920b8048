"""Live notifications: one agent's write reaches another agent's subscription (both protocol
generations, in-process clients over the real stores), and the hub that delivers them to legacy
sessions survives broken and hanging clients."""

from __future__ import annotations

import json
import uuid
from dataclasses import replace

import anyio
import pytest
from anyio import wait_all_tasks_blocked
from mcp import Client

from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import Runtime
from mcp_shared_memory.server.notifications import SEND_TIMEOUT, NotificationHub, SessionSender, TenantBus
from mcp_shared_memory.server.uris import recent_uri
from mcp_shared_memory.stores.bus import EventWritten, Topic

from ..conftest import Backdoor
from .conftest import Connect
from .mcp_clients import Inbox, in_process_server, until, watch

pytestmark = pytest.mark.anyio


async def test_agent_b_is_notified_of_agent_as_write_and_reads_it(
    connect: Connect, alice: Principal, alice_coder: Principal, mode: str
) -> None:
    uri = f"memory://{alice.tenant}/user/alice/recent"
    inbox = Inbox()
    async with connect(alice, mode) as a, connect(alice_coder, mode, inbox) as b, watch(b, mode, inbox, [uri]):
        await a.call_tool("write_event", {"content": "The auth service uses OAuth2 PKCE", "importance": 0.8})
        await inbox.wait_for(lambda box: uri in box.updated)
        assert inbox.updated == [uri]

        read = await b.read_resource(uri)
        events = json.loads(read.contents[0].text)["events"]
        assert [(e["agent_id"], e["content"]) for e in events] == [("research-1", "The auth service uses OAuth2 PKCE")]
        recent = await b.call_tool("get_recent_shared", {"limit": 5})
        assert recent.structured_content["events"][0]["agent_type"] == "research"


async def until_bus_subscribed(runtime: Runtime, backdoor: Backdoor, topic: Topic) -> None:
    """Until Redis has this process's subscription to ``topic`` (what a legacy connection's registration,
    which follows its ``initialized`` notification asynchronously, ends with)."""
    channel = runtime.bus.channel(topic)

    async def subscribed() -> bool:
        return bool(dict(await backdoor.redis.pubsub_numsub(channel)).get(channel))

    await until(subscribed)


async def test_workspace_creation_sends_list_changed(
    connect: Connect, runtime: Runtime, backdoor: Backdoor, alice: Principal, mode: str
) -> None:
    orchestrator = replace(alice, agent_id="orchestrator")
    worker = replace(alice, agent_id="worker")
    inbox = Inbox()
    async with connect(worker, mode, inbox) as w, watch(w, mode, inbox, list_changed=True):
        if mode == "legacy":  # registered for list_changed by its `initialized`, before the orchestrator connects
            await until_bus_subscribed(runtime, backdoor, Topic(alice.tenant))
        async with connect(orchestrator, mode) as orch:
            created = await orch.call_tool("create_workspace", {"task": "Ship v2", "agents": ["worker"]})
            await inbox.wait_for(lambda box: box.list_changed >= 1)
        workspace_id = created.structured_content["id"]
        listed = json.loads((await w.read_resource(f"memory://{alice.tenant}/workspaces")).contents[0].text)
        assert [ws["id"] for ws in listed["workspaces"]] == [workspace_id]
        prompt = await w.get_prompt("shared_context", {"scope": f"workspace:{workspace_id}"})
        assert 'Workspace task: "Ship v2' in prompt.messages[0].content.text


# The hub with misbehaving legacy sessions (a unit test over the real bus).


class GoodSession:
    def __init__(self) -> None:
        self.updated: list[str] = []
        self._changed = anyio.Event()

    async def send_resource_updated(self, uri: str) -> None:
        self.updated.append(uri)
        self._changed.set()
        self._changed = anyio.Event()

    async def send_resource_list_changed(self) -> None:
        raise AssertionError("not expected in this test")

    async def wait_for(self, uris: list[str], seconds: float) -> None:
        with anyio.fail_after(seconds):
            while not set(uris) <= set(self.updated):
                await self._changed.wait()


class BrokenSession:
    """Takes the first notification, then its stream is broken (the client went away mid-delivery)."""

    def __init__(self) -> None:
        self.calls = 0

    async def send_resource_updated(self, uri: str) -> None:
        self.calls += 1
        if self.calls > 1:
            raise anyio.BrokenResourceError

    async def send_resource_list_changed(self) -> None:
        await self.send_resource_updated("list_changed")


class HangingSession:
    """A client that never takes a notification (its transport blocks forever)."""

    def __init__(self) -> None:
        self.calls = 0

    async def send_resource_updated(self, uri: str) -> None:
        self.calls += 1
        await anyio.sleep_forever()

    async def send_resource_list_changed(self) -> None:
        await self.send_resource_updated("list_changed")


async def test_a_sender_stops_when_its_session_stream_breaks() -> None:
    session = BrokenSession()
    sender = SessionSender(session)
    sender.resource_updated("memory://t/user/a/recent")
    sender.resource_updated("memory://t/user/b/recent")
    sender.resource_updated("memory://t/user/c/recent")
    with anyio.fail_after(2):
        await sender.run()  # returns: the sender stopped
    assert session.calls == 2


async def test_the_hub_keeps_serving_when_one_session_breaks_and_another_hangs(runtime: Runtime, tenant: str) -> None:
    scopes = [Scope("user", f"u{i}") for i in range(12)]
    uris = [recent_uri(tenant, scope) for scope in scopes]
    good, broken, hanging = GoodSession(), BrokenSession(), HangingSession()
    hub = NotificationHub(runtime.bus, TenantBus())

    async def publish(round_scopes: list[Scope]) -> None:
        for seq, scope in enumerate(round_scopes):
            assert await runtime.bus.publish(EventWritten(tenant, scope, uuid.uuid4(), seq))

    async with anyio.create_task_group() as tasks:
        await tasks.start(hub.run)
        for key, session in enumerate([broken, hanging, good]):
            hub.add_legacy_session(tenant, key, session)
            for uri in uris:
                hub.add_legacy_subscription(uri, key)
        for scope in scopes:
            await hub.acquire(Topic(tenant, scope))

        # Each round's URIs are distinct, so nothing coalesces: the good session must get every one,
        # well before the hanging session's send times out.
        await publish(scopes[:6])
        await good.wait_for(uris[:6], seconds=SEND_TIMEOUT / 2)
        await publish(scopes[6:])
        await good.wait_for(uris[6:], seconds=SEND_TIMEOUT / 2)
        assert good.updated == uris

        await wait_all_tasks_blocked()
        assert broken.calls == 2  # its sender stopped at the broken stream: no further sends
        assert hanging.calls == 1  # still stuck in its first send, delaying nobody

        # The hub still runs: a session that joins now is served.
        late = GoodSession()
        hub.add_legacy_session(tenant, 99, late)
        hub.add_legacy_subscription(uris[0], 99)
        await publish(scopes[:1])
        await late.wait_for(uris[:1], seconds=SEND_TIMEOUT / 2)
        tasks.cancel_scope.cancel()


async def test_a_connection_outliving_the_first_on_the_same_server_is_still_notified(
    connect: Connect, runtime: Runtime, alice: Principal, alice_coder: Principal
) -> None:
    """Two in-process connections of one server (an embedding program's clients) share its lifespan."""
    uri = f"memory://{alice.tenant}/user/alice/recent"
    shared = in_process_server(runtime, alice_coder)
    inbox = Inbox()
    first_connected, first_may_leave = anyio.Event(), anyio.Event()

    async def first_connection() -> None:
        async with Client(shared) as client:
            await client.call_tool("get_recent_shared", {})
            first_connected.set()
            await first_may_leave.wait()

    async with connect(alice) as a, anyio.create_task_group() as tasks:
        tasks.start_soon(first_connection)
        await first_connected.wait()
        async with Client(shared, message_handler=inbox) as b:
            first_may_leave.set()
            async with watch(b, "auto", inbox, [uri]):
                await a.call_tool("write_event", {"content": "after the first client left", "importance": 0.9})
                await inbox.wait_for(lambda box: uri in box.updated, seconds=2)
