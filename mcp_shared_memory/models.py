"""Value types of the domain: identifiers, scopes, the caller's binding, events, workspaces, facts."""

from __future__ import annotations

import fnmatch
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .errors import AccessDenied, InvalidInput
from .validation import MAX_EVENT_TYPE_CHARS, MAX_IDENTIFIER_CHARS

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


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: bound per connection, never taken from tool arguments."""

    tenant: str
    agent_id: str
    agent_type: str = "agent"
    allowed_scopes: tuple[str, ...] = ("*",)
    default_scope: Scope | None = None
    can_create_workspaces: bool = True
    token_id: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        validate_identifier(self.tenant, "tenant")
        validate_identifier(self.agent_id, "agent_id")
        validate_identifier(self.agent_type, "agent_type")

    def may_use(self, scope: Scope) -> bool:
        text = str(scope)
        return any(fnmatch.fnmatchcase(text, pattern) for pattern in self.allowed_scopes)

    def resolve_scope(self, scope: str | Scope | None) -> Scope:
        """The scope a call acts on: the one named (if allowed) or the connection's default."""
        if scope is None or scope == "":
            if self.default_scope is None:
                raise InvalidInput("no scope given and this connection has no default scope: pass scope")
            resolved = self.default_scope
        else:
            resolved = scope if isinstance(scope, Scope) else Scope.parse(scope)
        if not self.may_use(resolved):
            raise AccessDenied(
                f"scope {resolved} is not allowed for this connection (allowed: {', '.join(self.allowed_scopes)})"
            )
        return resolved


class Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID
    seq: int
    scope_type: ScopeType
    scope_id: str
    agent_id: str
    agent_type: str
    event_type: str
    role: str | None = None
    content: str
    importance: float
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime
    similarity: float | None = None

    @property
    def scope(self) -> Scope:
        return Scope(self.scope_type, self.scope_id)


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event about to be appended to a scope's log (validated by ``SharedMemory``)."""

    agent_id: str
    agent_type: str
    event_type: str
    role: str | None
    content: str
    content_hash: str
    embedding: np.ndarray | None
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
    embedding: np.ndarray | None


class WriteResult(BaseModel):
    status: Literal["written", "deduplicated", "replayed"]
    event: Event | None = None
    event_id: uuid.UUID | None = None

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
    recent_events: list[Event]
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


class FactWrite(BaseModel):
    status: Literal["stored", "confirmed"]
    fact: Fact
