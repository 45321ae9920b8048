"""Value types of the domain: identifiers, scopes, the caller's binding, events, workspaces, facts."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import AccessDenied, InvalidInput
from .validation import MAX_EVENT_TYPE_CHARS, MAX_IDENTIFIER_CHARS

if TYPE_CHECKING:
    from .vectors import Vector

ScopeType = Literal["user", "workspace"]
SCOPE_TYPES: tuple[str, ...] = ("user", "workspace")

# No ':' (it separates Redis key parts), no whitespace or control characters, bounded length.
IDENTIFIER = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._@+-]{{0,{MAX_IDENTIFIER_CHARS - 1}}}$")
EVENT_TYPE = re.compile(rf"^[a-z][a-z0-9_.-]{{0,{MAX_EVENT_TYPE_CHARS - 1}}}$")


def validate_identifier(value: str, what: str) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise InvalidInput(
            f"invalid {what} {value!r}: use 1-{MAX_IDENTIFIER_CHARS} characters from letters, digits and . _ @ + -, "
            "starting with a letter or digit (no ':' or spaces)"
        )
    return value


def validate_event_type(value: str) -> str:
    if not isinstance(value, str) or not EVENT_TYPE.fullmatch(value):
        raise InvalidInput(
            f"invalid event_type {value!r}: use lowercase letters, digits and _ . - "
            "(e.g. 'observation', 'decision', 'agent_result')"
        )
    return value


def as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


# An event of a scope, named by its id (what write_event returns) or its seq (what listings show: ``#42``).
EventRef = uuid.UUID | int
_SEQ = re.compile(r"^#?([0-9]{1,18})$")


def event_ref(value: str | EventRef) -> EventRef:
    """The event ``value`` names: a UUID, or a seq (``42``, written ``"42"`` or ``"#42"``)."""
    if (parsed := as_uuid(str(value))) is not None:
        return parsed
    if (seq := _SEQ.match(str(value).strip())) is not None:
        return int(seq[1])
    raise InvalidInput(
        f"invalid event id {value!r}: pass the event_id write_event returned, or the seq a listing shows (#42)"
    )


def content_hash(content: str) -> str:
    return hashlib.sha256(content.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Scope:
    type: ScopeType
    id: str

    def __post_init__(self) -> None:
        if self.type not in SCOPE_TYPES:
            raise InvalidInput(f"unknown scope type {self.type!r}: use 'user' or 'workspace'")
        validate_identifier(self.id, f"{self.type} id")

    @classmethod
    def parse(cls, text: str) -> Scope:
        """Parse ``user:<id>`` or ``workspace:<id>``."""
        kind, sep, ident = (text or "").partition(":")
        if not sep:
            raise InvalidInput(f"invalid scope {text!r}: write 'user:<user_id>' or 'workspace:<workspace_id>'")
        return cls(kind, ident)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


Role = Literal["read", "write", "admin"]
ROLES: tuple[Role, ...] = ("read", "write", "admin")  # each includes the ones before it
ROLE_NAMES: dict[str, Role] = {
    "r": "read", "rw": "write", "rwa": "admin", "read": "read", "write": "write", "admin": "admin",
}  # fmt: skip
ROLE_SUFFIX: dict[Role, str] = {"read": "=r", "write": "", "admin": "=rwa"}
ACTIONS: dict[Role, str] = {"read": "reading", "write": "writing to", "admin": "managing"}


def role_at_least(role: Role | None, need: Role) -> bool:
    return role is not None and ROLES.index(role) >= ROLES.index(need)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a token or the stdio binding may do in some scopes: ``<pattern>[=<role>]``.

    The pattern is ``*`` (every scope), an exact scope (``user:alice``) or a prefix ending in ``*``
    (``workspace:*``, ``user:team-*``). The role is ``r`` (read), ``rw`` (read and write) or ``rwa`` (also
    manage workspaces), also spelled ``read``, ``write``, ``admin``; without ``=`` a grant reads and writes."""

    pattern: str
    role: Role

    @classmethod
    def parse(cls, text: str) -> Grant:
        pattern, sep, role_text = str(text).strip().partition("=")
        pattern = pattern.strip()
        role = ROLE_NAMES.get(role_text.strip().lower()) if sep else "write"
        if role is None:
            raise InvalidInput(
                f"invalid grant {text!r}: the role after '=' is r (read), rw (read and write) or rwa (also manage "
                "workspaces), e.g. 'user:alice=r'"
            )
        if pattern != "*":
            kind, colon, ident = pattern.partition(":")
            if not colon or kind not in SCOPE_TYPES or not ident:
                raise InvalidInput(
                    f"invalid grant {text!r}: write 'user:<id>', 'workspace:<id>', a prefix such as 'workspace:*', "
                    "or '*', optionally followed by =r, =rw or =rwa"
                )
            prefix = ident.removesuffix("*")
            if "*" in prefix or any(c in ident for c in "?[]"):
                raise InvalidInput(
                    f"invalid grant {text!r}: a pattern is an exact id or a prefix ending in a single '*' "
                    "(no '?', '[...]' or inner '*')"
                )
            if prefix:
                validate_identifier(prefix, f"{kind} id in grant")
        return cls(pattern, role)

    def matches(self, scope: Scope) -> bool:
        if self.pattern.endswith("*"):
            return str(scope).startswith(self.pattern[:-1])
        return str(scope) == self.pattern

    def __str__(self) -> str:
        """The canonical spelling (a read-write grant without a suffix, as grants were written before roles)."""
        return self.pattern + ROLE_SUFFIX[self.role]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: bound per connection, never taken from tool arguments. ``allowed_scopes`` are its
    grants (see ``Grant``), parsed once here: a malformed one is an ``InvalidInput``."""

    tenant: str
    agent_id: str
    agent_type: str = "agent"
    allowed_scopes: tuple[str, ...] = ("*",)
    default_scope: Scope | None = None
    can_create_workspaces: bool = True
    token_id: str | None = field(default=None, compare=False)
    grants: tuple[Grant, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_identifier(self.tenant, "tenant")
        validate_identifier(self.agent_id, "agent_id")
        validate_identifier(self.agent_type, "agent_type")
        object.__setattr__(self, "grants", tuple(Grant.parse(text) for text in self.allowed_scopes))

    def role_for(self, scope: Scope) -> Role | None:
        """The highest role of the grants that match ``scope`` (None: no grant does)."""
        roles = [ROLES.index(g.role) for g in self.grants if g.matches(scope)]
        return ROLES[max(roles)] if roles else None

    def role_for_every(self, scope_type: ScopeType) -> Role | None:
        """The highest role of the grants that match every scope of this type (``*``, ``<type>:*``)."""
        roles = [ROLES.index(g.role) for g in self.grants if g.pattern in ("*", f"{scope_type}:*")]
        return ROLES[max(roles)] if roles else None

    def may_use(self, scope: Scope, *, need: Role = "read") -> bool:
        return role_at_least(self.role_for(scope), need)

    def resolve_scope(self, scope: str | Scope | None, *, need: Role = "read") -> Scope:
        """The scope a call acts on: the one named (if a grant gives ``need`` in it) or the connection's default."""
        if scope is None or scope == "":
            if self.default_scope is None:
                raise InvalidInput("no scope given and this connection has no default scope: pass scope")
            resolved = self.default_scope
        else:
            resolved = scope if isinstance(scope, Scope) else Scope.parse(scope)
        role = self.role_for(resolved)
        if role is None:
            raise AccessDenied(
                f"scope {resolved} is not allowed for this connection (allowed: {', '.join(map(str, self.grants))})"
            )
        if not role_at_least(role, need):
            raise AccessDenied(
                f"{ACTIONS[need]} scope {resolved} needs the {need} role; this connection has {role} there "
                f"(a grant such as '{resolved}{ROLE_SUFFIX[need] or '=rw'}' gives it)"
            )
        return resolved


SearchMode = Literal["hybrid", "semantic", "lexical"]


class ListedEvent(BaseModel):
    """An event as a listing of one scope shows it: everything but the scope, which the listing names once."""

    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    seq: int
    agent_id: str
    agent_type: str
    event_type: str
    role: str | None = None
    content: str
    importance: float
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    # Set on search hits: why this event ranks where it does.
    similarity: float | None = Field(default=None, description="cosine similarity to the query")
    lexical: float | None = Field(default=None, description="full-text relevance to the query (0: no term)")
    score: float | None = Field(default=None, description="the fused ranking score; higher is better")


class Event(ListedEvent):
    scope_type: ScopeType
    scope_id: str

    @property
    def scope(self) -> Scope:
        return Scope(self.scope_type, self.scope_id)


class SearchHits(list[Event]):
    """A search's events, best first. ``degraded`` says what the ranking had to do without (None: nothing)."""

    degraded: str | None = None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended to a scope's log (validated by ``SharedMemory``)."""

    agent_id: str
    agent_type: str
    event_type: str
    role: str | None
    content: str
    content_hash: str
    embedding: Vector | None
    embedding_model: str | None
    importance: float
    metadata: dict[str, Any]
    idempotency_key: str | None


@dataclass(frozen=True, slots=True)
class UnconsolidatedEvent:
    """An event waiting to be consolidated into facts, with its vector when of the current model."""

    id: uuid.UUID
    seq: int
    agent_id: str
    event_type: str
    content: str
    importance: float
    embedding: Vector | None


class WriteResult(BaseModel):
    status: Literal["written", "deduplicated", "replayed"]
    event: Event | None = None
    event_id: uuid.UUID | None = None
    # For "deduplicated": the agent whose write of the same content in the window was kept.
    original_agent_id: str | None = None

    @property
    def written(self) -> bool:
        return self.status == "written"


class Workspace(BaseModel):
    id: str
    task: str
    agents: list[str]
    status: str
    context: dict[str, Any] = Field(default_factory=dict)
    created_by: str
    created_at: datetime
    updated_at: datetime


class WorkspaceSummary(BaseModel):
    workspace: Workspace
    recent_events: Sequence[ListedEvent]  # all in the workspace's scope
    event_count: int


class Fact(BaseModel):
    id: uuid.UUID
    scope_type: ScopeType
    scope_id: str
    fact: str
    source_event_ids: list[uuid.UUID] = Field(default_factory=list)
    source_agents: list[str] = Field(default_factory=list)
    confirmations: int = 1
    first_seen: datetime
    last_seen: datetime
    similarity: float | None = None
    lexical: float | None = None
    score: float | None = None


class FactWrite(BaseModel):
    status: Literal["stored", "confirmed"]
    fact: Fact
