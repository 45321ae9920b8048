"""MCP tools: thin translations to ``SharedMemory`` calls. No rules live here."""

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import BaseModel, Field

from .. import validation as limits
from ..errors import SharedMemoryError
from ..models import Event, Fact, Workspace, WorkspaceSummary
from ..settings import Settings
from .state import AppState

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
    float | None, Field(ge=-1, le=1, description="minimum cosine similarity; omit for the model's default")
]
Importance = Annotated[float, Field(ge=0, le=1)]
WorkspaceStatus = Literal[limits.WORKSPACE_STATUSES]  # type: ignore[valid-type]


class WriteEventResult(BaseModel):
    status: Literal["written", "deduplicated", "replayed"]
    event_id: str | None
    seq: int | None
    scope: str


class EventList(BaseModel):
    events: list[Event]
    next_since_seq: int | None = Field(description="pass as since_seq to get what was written after these")


class FactList(BaseModel):
    facts: list[Fact]


class StoreFactResult(BaseModel):
    status: Literal["stored", "confirmed"]
    fact: Fact


class Forgotten(BaseModel):
    forgotten: str


def domain_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A domain error reaches the agent as its own message; anything else stays in the server log."""

    @wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except SharedMemoryError as exc:
            raise ToolError(exc.message) from exc

    return wrapper


def state_of(ctx: Context[Any]) -> AppState:
    state: AppState = ctx.request_context.lifespan_context
    return state


def cursor(events: list[Event]) -> int | None:
    return max((e.seq for e in events), default=None)


def register_tools(mcp: MCPServer[Any], settings: Settings) -> None:
    """Register the tools; the configurable limits (content length) come from ``settings``."""
    Content = Annotated[
        str, Field(min_length=1, max_length=settings.max_content_chars, description="what happened or was learned")
    ]
    shared_floor = settings.min_shared_importance

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
                max_length=limits.MAX_IDEMPOTENCY_KEY_CHARS, description="same key on a retry returns the first write"
            ),
        ] = None,
    ) -> WriteEventResult:
        """Append an event to the shared memory of a scope, visible to every agent in it."""
        state = state_of(ctx)
        principal = state.principal()
        result = await state.memory.write_event(
            principal, content, event_type=event_type, importance=importance, role=role, metadata=metadata,
            scope=scope, idempotency_key=idempotency_key,
        )  # fmt: skip
        return WriteEventResult(
            status=result.status,
            event_id=str(result.event_id) if result.event_id else None,
            seq=result.event.seq if result.event else None,
            scope=str(principal.resolve_scope(scope)),
        )

    @mcp.tool(title="Search shared memory", annotations=READ_ONLY)
    @domain_errors
    async def search_shared(
        query: Query,
        ctx: Context[Any],
        limit: Limit = 10,
        min_similarity: Similarity = None,
        scope: Scope_ = None,
    ) -> EventList:
        """Semantic search over every agent's events in a scope, most similar first."""
        state = state_of(ctx)
        events = await state.memory.search_shared(
            state.principal(), query, scope=scope, limit=limit, min_similarity=min_similarity
        )
        return EventList(events=events, next_since_seq=None)

    @mcp.tool(title="Recent shared events", annotations=READ_ONLY)
    @domain_errors
    async def get_recent_shared(
        ctx: Context[Any],
        limit: Limit = 20,
        min_importance: Importance = 0.0,
        since_seq: Annotated[
            int | None, Field(ge=0, description="only events after this seq, oldest first (for paging)")
        ] = None,
        scope: Scope_ = None,
    ) -> EventList:
        """The newest events written by any agent in a scope (newest first), or those after since_seq."""
        state = state_of(ctx)
        events = await state.memory.get_recent_shared(
            state.principal(), scope=scope, limit=limit, min_importance=min_importance, since_seq=since_seq
        )
        return EventList(events=events, next_since_seq=cursor(events))

    @mcp.tool(title="One agent's history", annotations=READ_ONLY)
    @domain_errors
    async def get_agent_history(
        agent_id: Identifier,
        ctx: Context[Any],
        limit: Limit = 30,
        scope: Scope_ = None,
    ) -> EventList:
        """Events one agent wrote in a scope, newest first."""
        state = state_of(ctx)
        events = await state.memory.get_agent_history(state.principal(), agent_id, scope=scope, limit=limit)
        return EventList(events=events, next_since_seq=None)

    @mcp.tool(title="Create a workspace", annotations=APPEND)
    @domain_errors
    async def create_workspace(
        task: Annotated[
            str, Field(min_length=1, max_length=limits.MAX_TASK_CHARS, description="what the agents work on")
        ],
        ctx: Context[Any],
        agents: AgentIds = None,
        context: Annotated[dict[str, Any] | None, Field(description="initial structured context")] = None,
    ) -> Workspace:
        """Create a shared workspace for agents collaborating on one task; use scope 'workspace:<id>'."""
        state = state_of(ctx)
        return await state.memory.create_workspace(state.principal(), task, agents, context=context)

    @mcp.tool(title="Workspace summary", annotations=READ_ONLY)
    @domain_errors
    async def get_workspace_summary(
        workspace_id: Identifier,
        ctx: Context[Any],
        limit: Annotated[int, Field(ge=1, le=limits.MAX_WORKSPACE_EVENTS)] = 50,
    ) -> WorkspaceSummary:
        """A workspace's task, status, context, recent events and total event count."""
        state = state_of(ctx)
        return await state.memory.get_workspace_summary(state.principal(), workspace_id, limit=limit)

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
    ) -> Workspace:
        """Change a workspace's status, merge keys into its context, or replace its agent roster."""
        state = state_of(ctx)
        return await state.memory.update_workspace(
            state.principal(), workspace_id, status=status, context=context, agents=agents
        )

    @mcp.tool(title="Store a shared fact", annotations=UPDATE)
    @domain_errors
    async def store_fact(
        fact: Annotated[
            str, Field(min_length=1, max_length=limits.MAX_FACT_CHARS, description="one self-contained statement")
        ],
        ctx: Context[Any],
        scope: Scope_ = None,
    ) -> StoreFactResult:
        """Store a fact shared by the scope's agents; a near-duplicate confirms the existing fact."""
        state = state_of(ctx)
        written = await state.memory.store_fact(state.principal(), fact, scope=scope)
        return StoreFactResult(status=written.status, fact=written.fact)

    @mcp.tool(title="Search shared facts", annotations=READ_ONLY)
    @domain_errors
    async def search_facts(
        query: Query,
        ctx: Context[Any],
        top_k: Limit = 10,
        min_similarity: Similarity = None,
        scope: Scope_ = None,
    ) -> FactList:
        """Semantic search over the scope's shared facts, most similar first."""
        state = state_of(ctx)
        facts = await state.memory.search_facts(
            state.principal(), query, scope=scope, top_k=top_k, min_similarity=min_similarity
        )
        return FactList(facts=facts)

    @mcp.tool(title="Forget a shared fact", annotations=DELETE)
    @domain_errors
    async def forget_fact(
        fact_id: Annotated[str, Field(min_length=1, max_length=limits.MAX_FACT_ID_CHARS)],
        ctx: Context[Any],
        scope: Scope_ = None,
    ) -> Forgotten:
        """Delete a shared fact (e.g. one found to be wrong) from the scope."""
        state = state_of(ctx)
        await state.memory.forget_fact(state.principal(), fact_id, scope=scope)
        return Forgotten(forgotten=fact_id)
