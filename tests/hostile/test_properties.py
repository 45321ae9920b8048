"""Property-based: 10,000 generated calls (tools, resource reads, the shared_context prompt) from six agents
of two tenants, in and out of their scopes and workspaces, with plausible, adversarial and junk arguments,
through in-process MCP clients over the real stores. Every generated call is made twice, by an agent and by
its counterpart in the other tenant (same agent id, user and arguments). After every call:

- nothing escapes as a protocol crash: a tool answers with a result (a refusal is an error result whose
  message says what is wrong and leaks nothing), a resource read or prompt with a result or an MCP error;
- a refused call changed nothing in PostgreSQL, and an accepted one changed exactly what it reports;
- a call succeeds only in a scope the model says the caller may use (tenant, scope grant, membership);
- no answer carries a marker of a scope its caller may not read, or of a write that was refused.

Every text a call writes carries a unique marker (``MRK000123Z``), so any answer can be scanned for
content from elsewhere. After every example the acknowledged writes are read back by another member of
their scope, exactly where they were written, and the cache agrees with PostgreSQL; at the end no
notification has crossed a tenant."""

from __future__ import annotations

import fnmatch
import json
import re
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mcp import Client, MCPError

from mcp_shared_memory.errors import InvalidInput
from mcp_shared_memory.models import Principal, Scope
from mcp_shared_memory.runtime import Runtime

from ..conftest import Backdoor, fresh_id
from ..server.mcp_clients import Inbox, watch
from .conftest import HOSTILE, STATS, Connect, Snapshot, assert_clear_error, snapshot

pytestmark = pytest.mark.anyio

EXAMPLES = 125
CALLS_PER_EXAMPLE = 40  # each made by two agents: 125 x 40 x 2 = 10,000 generated calls
MIN_GENERATED_CALLS = 10_000
MARKER = re.compile(r"MRK\d{6}Z")
CLOSED = ("completed", "cancelled")

# Placeholders in generated arguments, resolved when the call runs (workspaces, facts and markers exist
# only then): the n-th known scope, workspace, fact or marker, or a resource URI built from them.


@dataclass(frozen=True)
class Ref:
    kind: str  # "scope" | "workspace" | "fact" | "marker" | "key" (an idempotency key: 0 is "k1", else fresh)
    index: int


@dataclass(frozen=True)
class UriRef:
    tenant: str  # "own" | "other"
    kind: str  # "recent" | "context" | "workspaces"
    scope: Ref | str


@dataclass(frozen=True)
class Call:
    who: str
    kind: str  # "tool" | "resource" | "prompt"
    name: str
    args: dict[str, Any]


# Strategies.

# Values are mostly drawn whole from curated lists (Hypothesis spends 0.1-0.4 ms on each value it builds
# piece by piece, which 10,000 calls of a dozen arguments cannot afford), combined freely by Hypothesis.
HOSTILE_TEXT = [v for v in HOSTILE.values() if len(v) < 1_000] + ["x" * 5_000, "'; DROP TABLE workspaces; --", "\\"]
JUNK = [None, True, False, 0, -1, 2**70, 1.5, -0.0, 1e308, "", "x", [], [1, "a"], {}, {"a": 1}, {"scope": "*"}]
ADVERSARIAL = st.sampled_from(HOSTILE_TEXT + JUNK)
TEXT = st.text(max_size=16).filter(lambda s: "MRK" not in s)
WORDS = st.sampled_from(["auth", "OAuth2 PKCE", "ERR_4417", "payments-api", "v2.3.1", "deploy", "secret plan", "MRK"])
AGENTS = st.sampled_from(
    ["research-1", "code-1", "bob-agent", "ops-1", "nobody", "Research-1", "a", "x.y@z+w-v_1", "9", "research-1."]
)
EVENT_TYPES = st.sampled_from(["observation", "decision", "error", "agent_result", "fact"])
SCOPES = st.sampled_from(
    [Ref("scope", i) for i in range(16)]
    + ["user:alice", "user:bob", "user:carol", "workspace:no-such", "user:Alice", "user:alice.", "workspace:code-1"]
)
SCALARS = st.one_of(st.integers(-1000, 1000), st.text(max_size=8), st.booleans(), st.floats(-1e6, 1e6))
# Curated values drawn whole, plus small generated ones: a structure generated key by key costs Hypothesis
# about a millisecond per call, which 10,000 calls cannot afford.
METADATA = st.one_of(
    st.sampled_from([
        {}, {"source": "ci"}, {"k": [1, "a", None]}, {"nested": {"a": {"b": [1, {"c": None}]}}}, {"": ""},
        {"a:b": "c/d", "*": "?"}, {"emoji": "\U0001f642", "rtl": "\u202e"}, {"big": 2**70}, {"f": 1e300}, {"k": None},
    ]),
    st.dictionaries(st.text(max_size=6), SCALARS, max_size=2),
)  # fmt: skip
FILTERS = st.one_of(
    st.sampled_from([
        {}, {"agent_ids": ["research-1"]}, {"agent_ids": ["code-1", "bob-agent"]}, {"agent_types": ["research"]},
        {"event_types": ["decision", "error"]}, {"since": "2020-01-01T00:00:00Z"},
        {"until": "2099-01-01T00:00:00+02:00"}, {"since": "2099-01-01T00:00:00Z", "until": "2020-01-01T00:00:00Z"},
        {"since": "2026-11-30T09:00:00"}, {"since": "0001-01-01T00:00:00+14:00"},
        {"until": "9999-12-31T23:59:59-14:00"}, {"since": "yesterday"}, {"min_importance": 0.5},
        {"min_importance": 1.5}, {"metadata": {"source": "ci"}}, {"metadata": {"k": 1, "b": True}}, {"metadata": {}},
        {"metadata": {"k": [1]}}, {"agent_ids": []}, {"agent_ids": ["a:b"]}, {"event_types": ["Decision"]},
        {"unknown": 1}, {"agent_ids": ["x"] * 51}, {"metadata": {f"k{i}": i for i in range(11)}},
        {"agent_ids": ["research-1"], "event_types": ["observation"], "min_importance": 0.1,
         "since": "2020-01-01T00:00:00Z", "until": "2099-01-01T00:00:00Z", "metadata": {"source": "ci"}},
    ]),
    st.builds(lambda agent, meta: {"agent_ids": [agent], "metadata": meta}, AGENTS,
              st.dictionaries(st.text(max_size=4), SCALARS, min_size=1, max_size=2)),
)  # fmt: skip
QUERY = st.one_of(TEXT, WORDS, st.builds(Ref, st.just("marker"), st.integers(0, 500)))
LIMIT = st.sampled_from([1, 3, 20, 50, 1000])
MODE = st.sampled_from(["lexical", "lexical", "lexical", "hybrid", "semantic", "HYBRID", ""])

TOOLS: dict[str, tuple[dict[str, st.SearchStrategy[Any]], set[str]]] = {
    "write_event": ({
        "content": TEXT, "event_type": EVENT_TYPES, "importance": st.floats(0, 1), "role": TEXT, "metadata": METADATA,
        "scope": SCOPES, "idempotency_key": st.sampled_from([Ref("key", 0), Ref("key", 1), Ref("key", 2)]),
    }, {"content"}),
    "get_recent_shared": ({
        "limit": LIMIT, "min_importance": st.floats(0, 1), "since_seq": st.integers(0, 300), "scope": SCOPES,
        "filters": FILTERS,
    }, set()),
    "search_shared": ({
        "query": QUERY, "limit": LIMIT, "min_similarity": st.floats(-1, 1), "scope": SCOPES, "mode": MODE,
        "filters": FILTERS, "recency_half_life": st.floats(1e-300, 1e12),
    }, {"query", "mode"}),
    "get_agent_history": ({"agent_id": AGENTS, "limit": LIMIT, "scope": SCOPES, "filters": FILTERS}, {"agent_id"}),
    "create_workspace": ({"task": TEXT, "agents": st.lists(AGENTS, max_size=3), "context": METADATA}, {"task"}),
    "get_workspace_summary": ({"workspace_id": st.builds(Ref, st.just("workspace"), st.integers(0, 50)),
                               "limit": LIMIT}, {"workspace_id"}),
    "update_workspace": ({
        "workspace_id": st.builds(Ref, st.just("workspace"), st.integers(0, 50)),
        "status": st.sampled_from(["active", "paused", "active", "completed", "cancelled", "failed", "finished"]),
        "context": METADATA, "agents": st.lists(AGENTS, max_size=3),
    }, {"workspace_id"}),
    "store_fact": ({"fact": TEXT, "scope": SCOPES}, {"fact"}),
    "search_facts": ({"query": QUERY, "top_k": LIMIT, "min_similarity": st.floats(-1, 1), "scope": SCOPES,
                      "mode": MODE}, {"query", "mode"}),
    "forget_fact": ({"fact_id": st.one_of(st.builds(Ref, st.just("fact"), st.integers(0, 50)), TEXT),
                     "scope": SCOPES}, {"fact_id"}),
}  # fmt: skip
# How often each kind of call is drawn: mostly the cheap ones, as an accepted write, search or prompt embeds
# text (~10 ms on two cores) where a refusal takes about a millisecond.
WEIGHTS = {
    "get_recent_shared": 6, "resource": 5, "get_agent_history": 4, "get_workspace_summary": 4, "update_workspace": 4,
    "forget_fact": 3, "search_shared": 3, "write_event": 3, "store_fact": 1, "search_facts": 1, "prompt": 1,
    "create_workspace": 1,
}  # fmt: skip
# Each generated call is made twice: by the agent drawn, and by its counterpart in the other tenant (the same
# agent id, user and arguments), so every argument is also tried from across the tenant boundary.
COUNTERPART = {"alice": "b-alice", "coder": "b-coder", "bob": "b-bob"} | {
    "b-alice": "alice", "b-coder": "coder", "b-bob": "bob"
}  # fmt: skip
PRINCIPALS = list(COUNTERPART)


# How many of every 4 calls of a tool get plausible arguments (the others adversarial ones): fewer for
# the tools whose accepted calls embed text (~10 ms each), to keep the run near half a minute.
PLAUSIBLE = {"write_event": 1, "store_fact": 1, "create_workspace": 1, "search_facts": 1, "search_shared": 1}
URIS = st.one_of(
    st.builds(UriRef, st.sampled_from(["own", "own", "other"]), st.sampled_from(["recent", "context", "workspaces"]),
              st.one_of(SCOPES, st.sampled_from(HOSTILE_TEXT))),
    st.sampled_from(["memory://", "memory:///workspaces", "file:///etc/passwd", "memory://*/workspaces"]),
)  # fmt: skip
PROMPT_TEXT = st.one_of(SCOPES, QUERY, st.sampled_from(HOSTILE_TEXT))  # prompt arguments are strings


@st.composite
def calls(draw: st.DrawFn) -> Call:
    """One call: its kind, its caller, and arguments that are plausible (each one right or omitted), or
    with one to three replaced by adversarial or junk values (or an unknown one added). Drawn with as few
    choices as possible: each costs Hypothesis ~0.05 ms, and there are 10,000 calls."""
    name = draw(KINDS)
    who = draw(WHO)
    if name == "resource":
        return Call(who, "resource", "read", {"uri": draw(URIS)})
    if name == "prompt":
        present = draw(st.integers(0, 3))
        args = {k: draw(PROMPT_TEXT) for i, k in enumerate(("scope", "query")) if present >> i & 1}
        return Call(who, "prompt", "shared_context", args)
    params, required = TOOLS[name]
    optional = [k for k in params if k not in required]
    present = draw(st.integers(0, 2 ** len(optional) - 1))
    args = {k: draw(params[k]) for k in [*required, *(k for i, k in enumerate(optional) if present >> i & 1)]}
    if draw(st.integers(0, 3)) >= PLAUSIBLE.get(name, 3):
        for _ in range(draw(st.integers(1, 3))):
            args[draw(st.sampled_from([*params, "bogus"]))] = draw(ADVERSARIAL)
    return Call(who, "tool", name, args)


KINDS = st.sampled_from([name for name, weight in WEIGHTS.items() for _ in range(weight)])
WHO = st.sampled_from(PRINCIPALS)
BATCH = st.lists(calls(), min_size=CALLS_PER_EXAMPLE, max_size=CALLS_PER_EXAMPLE)


# The model: who may use what.


@dataclass
class WorkspaceModel:
    tenant: str
    owner: str
    roster: list[str]
    status: str = "active"


@dataclass
class Written:
    """A write acknowledged in this example, to read back."""

    tenant: str
    scope: Scope
    event_id: str | None = None
    seq: int | None = None
    fact_id: str | None = None


@dataclass
class World:
    principals: dict[str, Principal]
    clients: dict[str, Client]
    backdoor: Backdoor
    workspaces: dict[str, WorkspaceModel] = field(default_factory=dict)
    facts: list[str] = field(default_factory=list)
    markers: dict[str, tuple[str, Scope] | None] = field(default_factory=dict)
    state: Snapshot | None = None
    written: list[Written] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    generated: int = 0
    verifications: int = 0

    @property
    def tenants(self) -> list[str]:
        return sorted({p.tenant for p in self.principals.values()})

    def may_read(self, who: str, tenant: str, scope: Scope) -> bool:
        p = self.principals[who]
        if tenant != p.tenant or not any(fnmatch.fnmatchcase(str(scope), g) for g in p.allowed_scopes):
            return False
        if scope.type == "user":
            return True
        ws = self.workspaces.get(scope.id)
        return ws is not None and ws.tenant == tenant and (p.agent_id == ws.owner or p.agent_id in ws.roster)

    def may_write(self, who: str, tenant: str, scope: Scope) -> bool:
        ws = self.workspaces.get(scope.id) if scope.type == "workspace" else None
        return self.may_read(who, tenant, scope) and (ws is None or ws.status not in CLOSED)

    def readers(self, tenant: str, scope: Scope) -> list[str]:
        return [who for who, p in self.principals.items() if self.may_read(who, tenant, scope)]

    # resolving placeholders

    def known_scopes(self) -> list[str]:
        return ["user:alice", "user:bob", "user:carol", *(f"workspace:{w}" for w in self.workspaces)]

    def resolve(self, value: Any, who: str) -> Any:
        if isinstance(value, Ref):
            if value.kind == "scope":
                scopes = self.known_scopes()
                return scopes[value.index % len(scopes)]
            if value.kind == "workspace":
                ids = [*self.workspaces, "no-such-workspace"]
                return ids[value.index % len(ids)]
            if value.kind == "key":
                return "k1" if value.index == 0 else str(uuid.uuid4())
            if value.kind == "fact":
                ids = [*self.facts, str(uuid.UUID(int=value.index))]
                return ids[value.index % len(ids)]
            markers = [*self.markers, "MRK999999Z"]
            return markers[value.index % len(markers)]
        if isinstance(value, UriRef):
            p = self.principals[who]
            tenant = p.tenant if value.tenant == "own" else next(t for t in self.tenants if t != p.tenant)
            if value.kind == "workspaces":
                return f"memory://{tenant}/workspaces"
            scope = self.resolve(value.scope, who)
            kind, _, ident = scope.partition(":") if isinstance(scope, str) else ("user", "", "x")
            if value.kind == "context":
                return f"memory://{tenant}/workspace/{ident}/context"
            return f"memory://{tenant}/{kind}/{ident}/recent"
        if isinstance(value, dict):
            return {k: self.resolve(v, who) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, who) for v in value]
        return value

    def new_marker(self) -> str:
        marker = f"MRK{len(self.markers):06d}Z"
        self.markers[marker] = None  # until acknowledged
        return marker

    def target(self, who: str, args: dict[str, Any]) -> Scope | None:
        """The scope a scoped tool acts on, as the server must resolve it (None: an invalid scope)."""
        raw = args.get("scope")
        if raw is None or raw == "":
            return self.principals[who].default_scope
        if not isinstance(raw, str):
            return None
        try:
            return Scope.parse(raw)
        except InvalidInput:
            return None


def marked(call: Call, args: dict[str, Any], marker: str) -> dict[str, Any]:
    """The call's arguments with the marker in every text it writes (where that text is a string)."""
    text_field = {"write_event": "content", "store_fact": "fact", "create_workspace": "task"}.get(call.name)
    if text_field and isinstance(args.get(text_field), str):
        args[text_field] = f"{args[text_field]} {marker}"
    if call.name in ("create_workspace", "update_workspace") and isinstance(args.get("context"), dict):
        args["context"] = {**args["context"], "note": marker}
    if call.name == "write_event" and isinstance(args.get("metadata"), dict):
        args["metadata"] = {**args["metadata"], "source": marker}
    return args


WRITES = {"write_event", "store_fact", "create_workspace", "update_workspace", "forget_fact"}
TEXT_WRITES = WRITES - {"forget_fact"}
SCOPED = {"write_event", "get_recent_shared", "search_shared", "get_agent_history", "store_fact", "search_facts",
          "forget_fact"}  # fmt: skip


async def run_call(world: World, call: Call) -> None:
    """One generated call and the invariants after it."""
    args = world.resolve(call.args, call.who)
    marker = world.new_marker() if call.kind == "tool" and call.name in TEXT_WRITES else None
    if marker:
        args = marked(call, args, marker)
    world.log.append(f"{call.who} {call.kind} {call.name} {short(args)}")
    client = world.clients[call.who]
    world.generated += 1
    error: str | None = None
    answer: Any = None
    try:
        if call.kind == "tool":
            result = await client.call_tool(call.name, args)
            answer = result.structured_content
            texts = [c.text for c in result.content if hasattr(c, "text")]
            if result.is_error:
                error = texts[0] if texts else ""
        elif call.kind == "resource":
            texts = [c.text for c in (await client.read_resource(args["uri"])).contents if hasattr(c, "text")]
        else:
            prompt = await client.get_prompt(call.name, args)
            texts = [m.content.text for m in prompt.messages if hasattr(m.content, "text")]
    except MCPError as exc:
        if call.kind == "tool" and not exc.message.startswith("Unknown tool"):
            raise AssertionError(f"a tool call failed at the protocol level: {exc.message}") from exc
        error, texts = exc.message, [exc.message, json.dumps(exc.data, default=str)]
    echoed = set(MARKER.findall(repr(args)))  # the call's own input may be quoted back
    scan(world, call, echoed, [*texts, json.dumps(answer, default=str)])
    if error is not None:
        assert_clear_error(error)
        # A refused write that reached the domain is checked at once; reads, and arguments the tool schema
        # refused, together after the example.
        if call.name in WRITES and "validation error" not in error:
            now = await snapshot(world.backdoor, *world.tenants)
            assert now == world.state, f"a refused call changed the store: {error[:200]}"
        return
    await accepted(world, call, args, answer, marker)


def scan(world: World, call: Call, echoed: set[str], texts: list[str]) -> None:
    """No marker of a scope the caller may not read, nor of a refused write (but for the call's own input)."""
    tenant = world.principals[call.who].tenant
    for found in set(MARKER.findall("\n".join(texts))) - echoed:
        origin = world.markers.get(found)
        assert origin is not None, f"{found}, from a write that was refused, appears in an answer"
        assert world.may_read(call.who, *origin), f"{call.who} ({tenant}) read {found} of {origin[0]} {origin[1]}"


async def accepted(world: World, call: Call, args: dict[str, Any], answer: Any, marker: str | None) -> None:
    """An accepted call: allowed by the model, and it changed exactly what it reports."""
    who, tenant = call.who, world.principals[call.who].tenant
    if call.kind == "resource":
        uri = args["uri"]
        assert uri.startswith(f"memory://{tenant}/"), f"{who} read {uri}"
        parts = uri.removeprefix(f"memory://{tenant}/").split("/")
        if parts[-1] in ("recent", "context"):
            assert world.may_read(who, tenant, Scope(parts[0], parts[1])), f"{who} read {uri}"  # type: ignore[arg-type]
        return
    if call.kind == "prompt" or call.name in SCOPED:
        scope = world.target(who, args)
        assert scope is not None, f"an invalid scope {args.get('scope')!r} was accepted"
        allowed = world.may_write if call.name in WRITES else world.may_read
        assert allowed(who, tenant, scope), f"{who} ({tenant}) used {scope} in {call.name}"
    if call.name in ("get_workspace_summary", "update_workspace"):
        ws = world.workspaces.get(args["workspace_id"])
        assert ws is not None and world.may_read(who, tenant, Scope("workspace", args["workspace_id"]))
        if call.name == "update_workspace":
            assert world.principals[who].agent_id == ws.owner, f"{who} changed a workspace it does not own"
    if call.name not in WRITES:
        return
    before = world.state
    after = await snapshot(world.backdoor, *world.tenants)
    assert before is not None
    change = (after.events - before.events, after.facts - before.facts, after.workspaces - before.workspaces)
    if call.name == "write_event":
        assert answer["scope"] == str(scope)
        assert change == ((1, 0, 0) if answer["status"] == "written" else (0, 0, 0)), (answer, change)
        if answer["status"] == "written":
            world.markers[marker] = (tenant, scope)  # type: ignore[index]
            world.written.append(Written(tenant, scope, event_id=answer["event_id"], seq=answer["seq"]))
    elif call.name == "store_fact":
        assert change == ((0, 1, 0) if answer["status"] == "stored" else (0, 0, 0)), (answer, change)
        fact = answer["fact"]
        assert (fact["scope_type"], fact["scope_id"]) == (scope.type, scope.id)
        if answer["status"] == "stored":
            world.markers[marker] = (tenant, scope)  # type: ignore[index]
            world.facts.append(fact["id"])
            world.written.append(Written(tenant, scope, fact_id=fact["id"]))
    elif call.name == "forget_fact":
        assert change == (0, -1, 0), change
    elif call.name == "create_workspace":
        assert change == (1, 0, 1), change
        creator = world.principals[who]
        assert creator.can_create_workspaces, f"{who} may not create workspaces"
        workspace = answer["id"]
        world.workspaces[workspace] = WorkspaceModel(tenant, world.principals[who].agent_id, list(answer["agents"]))
        world.markers[marker] = (tenant, Scope("workspace", workspace))  # type: ignore[index]
    else:  # update_workspace
        assert change == (0, 0, 0), change
        ws = world.workspaces[answer["id"]]
        ws.roster, ws.status = list(answer["agents"]), answer["status"]
        if isinstance(args.get("context"), dict):
            world.markers[marker] = (tenant, Scope("workspace", answer["id"]))  # type: ignore[index]
    world.state = after


async def verify_example(world: World) -> None:
    """No read changed the store; the example's acknowledged writes are where they were written, readable
    by another member there; the recent cache of every scope written agrees with PostgreSQL."""
    assert await snapshot(world.backdoor, *world.tenants) == world.state, "a read (or a refused read) wrote"
    events = [w for w in world.written if w.event_id]
    rows = await world.backdoor.db.fetch(
        "SELECT id::text, tenant_id, scope_type, scope_id FROM shared_episodic_memories WHERE id = ANY($1::uuid[])",
        [w.event_id for w in events],
    )
    assert {r["id"]: (r["tenant_id"], Scope(r["scope_type"], r["scope_id"])) for r in rows} == {
        w.event_id: (w.tenant, w.scope) for w in events
    }
    facts = [w for w in world.written if w.fact_id]
    rows = await world.backdoor.db.fetch(
        "SELECT id::text, tenant_id, scope_type, scope_id FROM semantic_facts WHERE id = ANY($1::uuid[])",
        [w.fact_id for w in facts],
    )
    # A fact may since have been forgotten; those left are where they were stored.
    stored = {r["id"]: (r["tenant_id"], Scope(r["scope_type"], r["scope_id"])) for r in rows}
    assert all(stored[w.fact_id] == (w.tenant, w.scope) for w in facts if w.fact_id in stored)
    by_scope: dict[tuple[str, Scope], list[Written]] = defaultdict(list)
    for w in events:
        by_scope[(w.tenant, w.scope)].append(w)
    for (tenant, scope), writes in by_scope.items():
        readers = world.readers(tenant, scope)
        if not readers:
            continue  # e.g. its writer was removed from the roster since
        reader = readers[-1]
        since = min(w.seq for w in writes if w.seq is not None) - 1
        seen = await verified_call(
            world, reader, "get_recent_shared", {"scope": str(scope), "since_seq": since, "limit": 1000}
        )
        ids = {e["id"] for e in seen["events"]}
        assert {w.event_id for w in writes} <= ids, f"{reader} cannot read back writes in {tenant} {scope}"
        cached = await verified_call(world, reader, "get_recent_shared", {"scope": str(scope), "limit": 20})
        newest = await world.backdoor.db.fetch(
            "SELECT id::text FROM shared_episodic_memories WHERE tenant_id = $1 AND scope_type = $2 AND scope_id = $3 "
            "ORDER BY seq DESC LIMIT 20", tenant, scope.type, scope.id,
        )  # fmt: skip
        assert [e["id"] for e in cached["events"]] == [r["id"] for r in newest], f"cache and log differ: {scope}"
    world.written.clear()


async def verified_call(world: World, who: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    world.verifications += 1
    result = await world.clients[who].call_tool(tool, args)
    assert not result.is_error, result.content[0].text
    scan(world, Call(who, "tool", tool, args), set(), [json.dumps(result.structured_content)])
    return dict(result.structured_content)


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) < 300 else f"{text[:300]}... ({len(text)} characters)"


# The test.


def principals(tenant_a: str, tenant_b: str) -> dict[str, Principal]:
    def agent(tenant: str, agent_id: str, agent_type: str, user: str, *grants: str) -> Principal:
        return Principal(
            tenant=tenant, agent_id=agent_id, agent_type=agent_type,
            allowed_scopes=grants or (f"user:{user}", "workspace:*"), default_scope=Scope("user", user),
        )  # fmt: skip

    return {
        "alice": agent(tenant_a, "research-1", "research", "alice"),
        "coder": agent(tenant_a, "code-1", "code", "alice"),
        "bob": agent(tenant_a, "bob-agent", "code", "bob"),
        # Tenant B: the same agent and user ids; one agent with every scope, one that may not create workspaces.
        "b-alice": agent(tenant_b, "research-1", "research", "alice", "*"),
        "b-coder": agent(tenant_b, "code-1", "code", "alice"),
        "b-bob": replace(agent(tenant_b, "bob-agent", "code", "bob"), can_create_workspaces=False),
    }


@pytest.fixture
async def world(connect: Connect, backdoor: Backdoor) -> AsyncIterator[tuple[World, dict[str, Inbox]]]:
    cast = principals(fresh_id("tenant-a"), fresh_id("tenant-b"))
    inboxes = {who: Inbox() for who in cast}
    async with AsyncExitStack() as stack:
        # The 2025 protocol (resources/subscribe): a 2026 client with a listen stream open costs each call twice
        # as much here; the other hostile tests cover both generations.
        clients = {who: await stack.enter_async_context(connect(p, "legacy", inboxes[who])) for who, p in cast.items()}
        world = World(principals=cast, clients=clients, backdoor=backdoor)
        for who, task, agents in [("alice", "alice's task", ["code-1"]), ("bob", "bob's task", []),
                                  ("b-alice", "tenant B's task", ["code-1"])]:  # fmt: skip
            marker = world.new_marker()
            created = await clients[who].call_tool("create_workspace", {"task": f"{task} {marker}", "agents": agents})
            workspace = created.structured_content["id"]
            world.workspaces[workspace] = WorkspaceModel(cast[who].tenant, cast[who].agent_id, agents)
            world.markers[marker] = (cast[who].tenant, Scope("workspace", workspace))
        for who, p in cast.items():  # every agent watches what it may read
            scopes = [p.default_scope, *(Scope("workspace", w) for w in world.workspaces)]
            uris = [f"memory://{p.tenant}/{s.type}/{s.id}/recent" for s in scopes if world.may_read(who, p.tenant, s)]
            await stack.enter_async_context(watch(clients[who], "legacy", inboxes[who], uris))
        world.state = await snapshot(backdoor, *world.tenants)
        yield world, inboxes


async def test_generated_calls_never_crash_leak_or_half_write(
    world: tuple[World, dict[str, Inbox]], runtime: Runtime
) -> None:
    model, inboxes = world
    started = time.perf_counter()

    async def run_batch(batch: list[Call]) -> None:
        model.log.clear()
        try:
            for call in batch:
                await run_call(model, call)
                await run_call(model, replace(call, who=COUNTERPART[call.who]))
            await verify_example(model)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nafter these calls:\n" + "\n".join(model.log[-10:])) from None

    @settings(
        max_examples=EXAMPLES, deadline=None, derandomize=True, database=None, phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(BATCH)
    def examples(batch: list[Call]) -> None:
        anyio.from_thread.run(run_batch, batch)

    await anyio.to_thread.run_sync(examples)

    # Every agent's own write is delivered after everything before it; by then a notification from
    # another tenant would have arrived.
    for who, p in model.principals.items():
        own = f"memory://{p.tenant}/user/{p.default_scope.id}/recent"  # type: ignore[union-attr]
        await model.clients[who].call_tool("write_event", {"content": f"last word of {who}"})
        await inboxes[who].wait_for(lambda box, own=own: own in box.updated)
    for who, p in model.principals.items():
        assert all(uri.startswith(f"memory://{p.tenant}/") for uri in inboxes[who].updated), (who, inboxes[who].updated)
    # Every call was audited, and no content reached the audit trail.
    assert runtime.audit is not None
    await runtime.audit.flush()
    audited = await model.backdoor.db.fetchrow(
        "SELECT count(*) AS calls, count(*) FILTER (WHERE concat_ws(' ', target, scope) ~ 'MRK[0-9]{6}Z') AS content "
        "FROM audit_log WHERE tenant_id = ANY($1::text[])",
        model.tenants,
    )
    assert audited is not None and audited["content"] == 0
    assert audited["calls"] >= model.generated * 0.9  # prompts are not audited

    STATS["generated calls"] += model.generated
    STATS["verification calls"] += model.verifications
    STATS["seconds"] += time.perf_counter() - started
    STATS["markers"] += len(model.markers)
    STATS["acknowledged markers"] += sum(1 for origin in model.markers.values() if origin is not None)
    assert model.generated >= MIN_GENERATED_CALLS
