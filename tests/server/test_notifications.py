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
from mcp import Client, MCPError

from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import Runtime
from mcp_shared_memory.server.notifications import SEND_TIMEOUT, ListenerBus, NotificationHub, SessionSender
from mcp_shared_memory.server.uris import context_uri, recent_uri, workspaces_uri
from mcp_shared_memory.stores.messages import EventWritten, Topic

from ..conftest import Backdoor
from .conftest import Connect
from .mcp_clients import Inbox, in_process_server, legacy_subscribe, until, watch

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
    hub = NotificationHub(runtime.bus, ListenerBus(), runtime.memory)
    reader = Principal(tenant=tenant, agent_id="reader", allowed_scopes=("user:*",))

    async def publish(round_scopes: list[Scope]) -> None:
        for seq, scope in enumerate(round_scopes):
            assert await runtime.bus.publish(EventWritten(tenant, scope, uuid.uuid4(), seq))

    async with anyio.create_task_group() as tasks:
        await tasks.start(hub.run)
        for key, session in enumerate([broken, hanging, good]):
            hub.add_legacy_session(reader, key, session)
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
        hub.add_legacy_session(reader, 99, late)
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


# Per-member workspace notifications


async def test_only_members_hear_of_a_workspace_being_created(
    connect: Connect, alice: Principal, tenant: str, mode: str
) -> None:
    """A connection limited to another user, or with a workspace grant but no place on the roster, is not
    told that a workspace exists."""
    orchestrator = replace(alice, agent_id="orchestrator")
    worker = replace(alice, agent_id="worker")
    carol = Principal(tenant=tenant, agent_id="carol-agent", allowed_scopes=("user:carol",),
                      default_scope=Scope("user", "carol"))  # fmt: skip
    bob = Principal(tenant=tenant, agent_id="bob-agent", allowed_scopes=("user:bob", "workspace:*"),
                    default_scope=Scope("user", "bob"))  # fmt: skip
    inboxes = {"worker": Inbox(), "carol": Inbox(), "bob": Inbox()}
    async with (
        connect(worker, mode, inboxes["worker"]) as w,
        connect(carol, mode, inboxes["carol"]) as c,
        connect(bob, mode, inboxes["bob"]) as b,
        # Each also watches a resource of its own: on legacy connections this registers them for list_changed.
        watch(w, mode, inboxes["worker"], [workspaces_uri(tenant)], list_changed=True),
        watch(c, mode, inboxes["carol"], [recent_uri(tenant, Scope("user", "carol"))], list_changed=True),
        watch(b, mode, inboxes["bob"], [workspaces_uri(tenant)], list_changed=True),
        connect(orchestrator, mode) as orch,
    ):
        await orch.call_tool("create_workspace", {"task": "Ship v2", "agents": ["worker"]})
        await inboxes["worker"].wait_for(lambda box: box.list_changed >= 1 and workspaces_uri(tenant) in box.updated)
        await wait_all_tasks_blocked()  # every session's notifications of that change are sent by now

    assert (inboxes["carol"].list_changed, inboxes["carol"].updated) == (0, [])
    assert (inboxes["bob"].list_changed, inboxes["bob"].updated) == (0, [])


async def test_roster_changes_notify_the_agents_added_and_removed(
    connect: Connect, alice: Principal, alice_coder: Principal, tenant: str, mode: str
) -> None:
    """The agent taken off the roster hears of it, then no more of the workspace's events; the agent added
    hears of it, and may watch the workspace from then on (not before: its URIs are watched by members)."""
    newcomer = replace(alice_coder, agent_id="code-2")
    async with connect(alice) as owner:
        created = await owner.call_tool("create_workspace", {"task": "Rotate keys", "agents": ["code-1"]})
        workspace_id = created.structured_content["id"]
        scope = Scope("workspace", workspace_id)
        events_uri = recent_uri(tenant, scope)
        watched = [workspaces_uri(tenant), context_uri(tenant, workspace_id), events_uri]
        removed_inbox, added_inbox = Inbox(), Inbox()
        async with (
            connect(alice_coder, mode, removed_inbox) as removed,
            connect(newcomer, mode, added_inbox) as added,
            watch(removed, mode, removed_inbox, watched, list_changed=True),
            watch(added, mode, added_inbox, [workspaces_uri(tenant)], list_changed=True),
        ):
            with pytest.raises(MCPError, match="not a member"):
                await subscribe_once(added, mode, events_uri)
            await owner.call_tool("update_workspace", {"workspace_id": workspace_id, "agents": ["code-2"]})
            await removed_inbox.wait_for(lambda box: box.list_changed >= 1 and set(watched[:2]) <= set(box.updated))
            await added_inbox.wait_for(lambda box: box.list_changed >= 1 and workspaces_uri(tenant) in box.updated)
            before = list(removed_inbox.updated)

            async with watch(added, mode, added_inbox, [events_uri]):
                await owner.call_tool("write_event", {"content": "new signing key live", "scope": str(scope)})
                await added_inbox.wait_for(lambda box: events_uri in box.updated)
                await wait_all_tasks_blocked()

    assert removed_inbox.updated == before
    assert events_uri not in removed_inbox.updated


async def subscribe_once(client: Client, mode: str, uri: str) -> None:
    """Subscribe in the client's protocol generation (a listen stream is opened and closed again)."""
    if mode == "legacy":
        await legacy_subscribe(client, uri)
        return
    async with client.listen(resource_subscriptions=[uri]):
        pass


async def test_a_member_hears_of_workspace_events_and_an_outsider_does_not(
    runtime: Runtime, alice: Principal, tenant: str
) -> None:
    """The hub over the real bus: an event in a workspace reaches the legacy sessions of its members only,
    whatever they subscribed to (the roster is looked up through the memory)."""
    workspace = await runtime.memory.create_workspace(alice, "Hub roster", ["code-1"])
    scope = Scope("workspace", workspace.id)
    uri = recent_uri(tenant, scope)
    member = Principal(tenant=tenant, agent_id="code-1", allowed_scopes=("workspace:*",))
    outsider = Principal(tenant=tenant, agent_id="bob-agent", allowed_scopes=("workspace:*",))
    reader_only_elsewhere = Principal(tenant=tenant, agent_id="code-1", allowed_scopes=("workspace:other",))
    sessions = {"member": GoodSession(), "outsider": GoodSession(), "no-grant": GoodSession()}
    hub = NotificationHub(runtime.bus, ListenerBus(), runtime.memory)
    async with anyio.create_task_group() as tasks:
        await tasks.start(hub.run)
        for key, (principal, session) in enumerate(zip((member, outsider, reader_only_elsewhere),
                                                       sessions.values(), strict=True)):  # fmt: skip
            hub.add_legacy_session(principal, key, session)
            hub.add_legacy_subscription(uri, key)
        await hub.acquire(Topic(tenant, scope))
        assert await runtime.bus.publish(EventWritten(tenant, scope, uuid.uuid4(), 1))
        await sessions["member"].wait_for([uri], seconds=5)
        await wait_all_tasks_blocked()
        tasks.cancel_scope.cancel()

    assert sessions["outsider"].updated == [] and sessions["no-grant"].updated == []
