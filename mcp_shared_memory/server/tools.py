"""MCP tools: thin translations to ``SharedMemory`` calls. No domain rules live here; every call passes the
per-caller rate limit first, and every result is sized by the response limit (``limits.py``) on its way out."""

from collections.abc import Awaitable, Callable, Sequence
from contextvars import ContextVar
from functools import wraps
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ToolAnnotations
from pydantic import Field, WithJsonSchema

from .. import render
from .. import validation as limits
from ..errors import RateLimited, SharedMemoryError
from ..event_filter import EventFilter
from ..models import Event, ListedEvent, Principal, Scope, SearchMode, Workspace
from ..settings import Settings
from . import client_logging
from .results import (
    CreatedWorkspace,
    EventList,
    FactList,
    Forgotten,
    StoreFactResult,
    SummaryResult,
    ToolResults,
    WriteEventResult,
)
from .state import AppState
from .uris import context_uri, recent_uri

P = ParamSpec("P")
R = TypeVar("R")

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
APPEND = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
UPDATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
DELETE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)

Scope_ = Annotated[
    str | None,
    Field(
        description="'user:<id>' or 'workspace:<id>'; omit for this connection's default scope",
        max_length=limits.MAX_SCOPE_CHARS,
    ),
]
Limit = Annotated[int, Field(ge=1, le=limits.MAX_LIMIT, description="maximum number of results")]
Query = Annotated[str, Field(min_length=1, max_length=limits.MAX_QUERY_CHARS)]
Identifier = Annotated[str, Field(min_length=1, max_length=limits.MAX_IDENTIFIER_CHARS)]
AgentIds = Annotated[list[str] | None, Field(max_length=limits.MAX_AGENTS, description="agent ids taking part")]
Similarity = Annotated[
    float | None,
    Field(
        ge=-1, le=1, description="minimum cosine similarity (hybrid also keeps hits sharing a term); omit for default"
    ),
]
Importance = Annotated[float, Field(ge=0, le=1)]
Mode = Annotated[SearchMode, Field(description="how the query matches (see the tool description)")]
Filters = Annotated[
    EventFilter | None,
    # Inlined: some clients do not resolve a $ref in an input schema.
    WithJsonSchema({"anyOf": [EventFilter.model_json_schema(), {"type": "null"}]}),
    Field(description="only events matching all of these; since/until are ISO 8601 with a timezone"),
]
MODES = (
    "Mode: hybrid (default) matches words and meaning; lexical for exact ids, codes, names; semantic for paraphrases."
)
WorkspaceStatus = Literal[limits.WORKSPACE_STATUSES]  # type: ignore[valid-type]
# Rate-limit tokens a call takes: a write (it embeds, commits and announces) costs more than a read.
READ_COST, WRITE_COST = 1, 2
WRITE_TOOLS = frozenset(
    {"write_event", "create_workspace", "update_workspace", "store_fact", "forget_fact", "retract_event"}
)

# Set by the audit middleware around a call: the domain error a tool failed with (the SDK turns it into
# an error result before the middleware sees it).
TOOL_FAILURE: ContextVar[dict[str, str] | None] = ContextVar("msm_tool_failure", default=None)


def domain_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """The call boundary: the caller's rate limit first; a domain error reaches the agent as its own message,
    anything else stays in the server log."""
    cost = WRITE_COST if fn.__name__ in WRITE_TOOLS else READ_COST

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            ctx = kwargs.get("ctx")
            if isinstance(ctx, Context) and (limiter := state_of(ctx).runtime.rate_limiter) is not None:
                principal = state_of(ctx).principal()
                await limiter.take(principal.tenant, caller_of(principal), cost=cost)
            return await fn(*args, **kwargs)
        except SharedMemoryError as exc:
            if (failure := TOOL_FAILURE.get()) is not None:
                failure["error"] = type(exc).__name__
            if isinstance(exc, RateLimited):
                client_logging.tell("warning", f"{fn.__name__} was rate limited: {exc.message}")
            raise ToolError(exc.message) from exc

    return wrapper


def state_of(ctx: Context[Any]) -> AppState:
    state: AppState = ctx.request_context.lifespan_context
    return state


def caller_of(principal: Principal) -> str:
    """Whose rate limit a call counts against: its bearer token (HTTP), else its agent (stdio)."""
    return f"token:{principal.token_id}" if principal.token_id else f"agent:{principal.agent_id}"


def listed_in(principal: Principal, scope: str | None) -> str:
    """The scope a listing is of (the one named, or the connection's default), as the listing names it."""
    return str(principal.resolve_scope(scope))


def cursor(events: Sequence[ListedEvent]) -> int | None:
    return max((e.seq for e in events), default=None)


def register_tools(mcp: MCPServer[Any], settings: Settings) -> None:
    """Register the tools; the configurable limits (content length, response size) and the text format come
    from ``settings``."""
    Content = Annotated[
        str, Field(min_length=1, max_length=settings.max_content_chars, description="what happened or was learned")
    ]
    shared_floor = settings.min_shared_importance
    results = ToolResults(settings)
    answer, answer_list = results.one, results.listing

    @mcp.tool(title="Write a shared event", annotations=APPEND)
    @domain_errors
    async def write_event(
        content: Content,
        ctx: Context[Any],
        event_type: Annotated[
            str,
            Field(max_length=limits.MAX_EVENT_TYPE_CHARS, description="e.g. observation, decision, agent_result"),
        ] = "observation",
        importance: Annotated[
            float, Field(ge=0, le=1, description=f"0-1; events >= {shared_floor} reach other agents' shared context")
        ] = 0.5,
        role: Annotated[str | None, Field(max_length=limits.MAX_ROLE_CHARS)] = None,
        metadata: Annotated[
            dict[str, Any] | None, Field(description=f"JSON object of at most {limits.MAX_METADATA_BYTES} bytes")
        ] = None,
        scope: Scope_ = None,
        idempotency_key: Annotated[
            str | None,
            Field(
                max_length=limits.MAX_IDEMPOTENCY_KEY_CHARS,
                description="your retry with the same key returns your first write",
            ),
        ] = None,
    ) -> Annotated[CallToolResult, WriteEventResult]:
        """Append an event to the shared memory of a scope, visible to every agent in it."""
        state = state_of(ctx)
        principal = state.principal()
        result = await state.memory.write_event(
            principal, content, event_type=event_type, importance=importance, role=role, metadata=metadata,
            scope=scope, idempotency_key=idempotency_key,
        )  # fmt: skip
        written = WriteEventResult(
            status=result.status,
            event_id=str(result.event_id) if result.event_id else None,
            seq=result.event.seq if result.event else None,
            scope=str(principal.resolve_scope(scope)),
            original_agent_id=result.original_agent_id,
        )
        if written.status != "deduplicated":
            return answer(written)
        original = f" (event {written.event_id})" if written.event_id else ""
        return answer(
            written,
            lambda _: (
                f"Not stored: a duplicate. Agent {written.original_agent_id or 'unknown'} wrote the same "
                f"content in {written.scope} within the last {settings.dedup_window} s{original}."
            ),
        )

    @mcp.tool(
        title="Search shared memory",
        description=f"Search every agent's events in a scope, best first. {MODES} Filters narrow before ranking.",
        annotations=READ_ONLY,
    )
    @domain_errors
    async def search_shared(
        query: Query,
        ctx: Context[Any],
        limit: Limit = 10,
        min_similarity: Similarity = None,
        scope: Scope_ = None,
        mode: Mode = "hybrid",
        filters: Filters = None,
        recency_half_life: Annotated[
            float | None, Field(gt=0, description="seconds; prefer newer events (an event this old counts half)")
        ] = None,
    ) -> Annotated[CallToolResult, EventList]:
        state = state_of(ctx)
        principal = state.principal()
        events = await state.memory.search_shared(
            principal, query, scope=scope, limit=limit, min_similarity=min_similarity, mode=mode,
            filters=filters, recency_half_life=recency_half_life,
        )  # fmt: skip
        in_scope = listed_in(principal, scope)
        return answer_list(
            events, lambda kept, cut: EventList(scope=in_scope, events=kept, truncated=cut, degraded=events.degraded),
            lambda listed, now: render.search_results(listed.events, now=now, degraded=listed.degraded),
            hint="lower limit, or narrow the search with filters",
        )  # fmt: skip

    @mcp.tool(
        title="Recent shared events",
        description="The newest events written by any agent in a scope (newest first), or those after since_seq. "
        "Filters keep only some agents', event types' or a period's events.",
        annotations=READ_ONLY,
    )
    @domain_errors
    async def get_recent_shared(
        ctx: Context[Any],
        limit: Limit = 20,
        min_importance: Importance = 0.0,
        since_seq: Annotated[
            int | None, Field(ge=0, description="only events after this seq, oldest first (for paging)")
        ] = None,
        scope: Scope_ = None,
        filters: Filters = None,
    ) -> Annotated[CallToolResult, EventList]:
        state = state_of(ctx)
        principal = state.principal()
        events = await state.memory.get_recent_shared(
            principal, scope=scope, limit=limit, min_importance=min_importance, since_seq=since_seq,
            filters=filters,
        )  # fmt: skip
        in_scope = listed_in(principal, scope)
        return answer_list(
            events,
            lambda kept, cut: EventList(scope=in_scope, events=kept, next_since_seq=cursor(kept), truncated=cut),
            lambda listed, now: render.recent_events(
                listed.events, now=now, since_seq=since_seq, next_since_seq=listed.next_since_seq
            ),
            hint="lower limit, narrow with filters, or page on with since_seq",
        )  # fmt: skip

    @mcp.tool(title="One agent's history", annotations=READ_ONLY)
    @domain_errors
    async def get_agent_history(
        agent_id: Identifier,
        ctx: Context[Any],
        limit: Limit = 30,
        scope: Scope_ = None,
        filters: Filters = None,
    ) -> Annotated[CallToolResult, EventList]:
        """Events one agent wrote in a scope, newest first."""
        state = state_of(ctx)
        principal = state.principal()
        events = await state.memory.get_agent_history(principal, agent_id, scope=scope, limit=limit, filters=filters)
        in_scope = listed_in(principal, scope)
        return answer_list(
            events, lambda kept, cut: EventList(scope=in_scope, events=kept, truncated=cut),
            lambda listed, now: render.agent_history(listed.events, agent_id, now=now),
            hint="lower limit, or narrow with filters",
        )  # fmt: skip

    @mcp.tool(title="Create a workspace", annotations=APPEND)
    @domain_errors
    async def create_workspace(
        task: Annotated[
            str, Field(min_length=1, max_length=limits.MAX_TASK_CHARS, description="what the agents work on")
        ],
        ctx: Context[Any],
        agents: AgentIds = None,
        context: Annotated[dict[str, Any] | None, Field(description="initial structured context")] = None,
    ) -> Annotated[CallToolResult, CreatedWorkspace]:
        """Create a shared workspace for agents working on one task; returns the scope to pass, URIs to watch."""
        state = state_of(ctx)
        principal = state.principal()
        workspace = await state.memory.create_workspace(principal, task, agents, context=context)
        scope = Scope("workspace", workspace.id)
        created = CreatedWorkspace(
            **workspace.model_dump(), scope=str(scope), recent_uri=recent_uri(principal.tenant, scope),
            context_uri=context_uri(principal.tenant, workspace.id),
        )  # fmt: skip
        return answer(
            created,
            lambda now: render.created_workspace(
                workspace, scope=created.scope, recent_uri=created.recent_uri, context_uri=created.context_uri, now=now
            ),
        )

    @mcp.tool(title="Workspace summary", annotations=READ_ONLY)
    @domain_errors
    async def get_workspace_summary(
        workspace_id: Identifier,
        ctx: Context[Any],
        limit: Annotated[int, Field(ge=1, le=limits.MAX_WORKSPACE_EVENTS)] = 50,
    ) -> Annotated[CallToolResult, SummaryResult]:
        """A workspace's task, status, context, recent events and total event count."""
        state = state_of(ctx)
        summary = await state.memory.get_workspace_summary(state.principal(), workspace_id, limit=limit)
        return answer_list(
            summary.recent_events,
            lambda kept, cut: SummaryResult(
                workspace=summary.workspace, recent_events=kept, event_count=summary.event_count, truncated=cut
            ),
            lambda listed, now: render.workspace_summary(listed, now=now),
            hint="lower limit",
        )

    @mcp.tool(title="Update a workspace", annotations=UPDATE)
    @domain_errors
    async def update_workspace(
        workspace_id: Identifier,
        ctx: Context[Any],
        status: Annotated[WorkspaceStatus | None, Field(description="new status")] = None,
        context: Annotated[dict[str, Any] | None, Field(description="keys merged into the context")] = None,
        agents: Annotated[
            list[str] | None, Field(max_length=limits.MAX_AGENTS, description="replaces the roster")
        ] = None,
    ) -> Annotated[CallToolResult, Workspace]:
        """Change a workspace's status, merge keys into its context, or replace its agent roster."""
        state = state_of(ctx)
        return answer(
            await state.memory.update_workspace(
                state.principal(), workspace_id, status=status, context=context, agents=agents
            )
        )

    @mcp.tool(title="Store a shared fact", annotations=UPDATE)
    @domain_errors
    async def store_fact(
        fact: Annotated[
            str, Field(min_length=1, max_length=limits.MAX_FACT_CHARS, description="one self-contained statement")
        ],
        ctx: Context[Any],
        scope: Scope_ = None,
    ) -> Annotated[CallToolResult, StoreFactResult]:
        """Store a fact shared by the scope's agents; a near-duplicate confirms the existing fact."""
        state = state_of(ctx)
        written = await state.memory.store_fact(state.principal(), fact, scope=scope)
        return answer(StoreFactResult(status=written.status, fact=written.fact))

    @mcp.tool(
        title="Search shared facts", description=f"Search the scope's shared facts, best first. {MODES}",
        annotations=READ_ONLY,
    )  # fmt: skip
    @domain_errors
    async def search_facts(
        query: Query,
        ctx: Context[Any],
        top_k: Limit = 10,
        min_similarity: Similarity = None,
        scope: Scope_ = None,
        mode: Mode = "hybrid",
    ) -> Annotated[CallToolResult, FactList]:
        state = state_of(ctx)
        facts = await state.memory.search_facts(
            state.principal(), query, scope=scope, top_k=top_k, min_similarity=min_similarity, mode=mode
        )
        return answer_list(
            facts, lambda kept, cut: FactList(facts=kept, truncated=cut),
            lambda listed, now: render.facts(listed.facts, now=now), hint="lower top_k", noun="facts",
        )  # fmt: skip

    @mcp.tool(title="Forget a shared fact", annotations=DELETE)
    @domain_errors
    async def forget_fact(
        fact_id: Annotated[str, Field(min_length=1, max_length=limits.MAX_FACT_ID_CHARS)],
        ctx: Context[Any],
        scope: Scope_ = None,
    ) -> Annotated[CallToolResult, Forgotten]:
        """Delete a shared fact (e.g. one found to be wrong) from the scope."""
        state = state_of(ctx)
        await state.memory.forget_fact(state.principal(), fact_id, scope=scope)
        return answer(Forgotten(forgotten=fact_id))

    @mcp.tool(title="Retract an event", annotations=DELETE)
    @domain_errors
    async def retract_event(
        event_id: Annotated[
            str,
            Field(
                min_length=1,
                max_length=limits.MAX_FACT_ID_CHARS,
                coerce_numbers_to_str=True,  # a seq passed as the number the structured listing holds
                description="the event_id write_event returned, or the event's seq as listings show it (#42)",
            ),
        ],
        ctx: Context[Any],
        scope: Scope_ = None,
    ) -> Annotated[CallToolResult, Event]:
        """Delete an event you wrote (e.g. a mistake) from a scope; its agents are notified. Returns it as it was."""
        state = state_of(ctx)
        return answer(await state.memory.retract_event(state.principal(), event_id, scope=scope))
