"""What travels on the bus (``bus.py``), without Redis: the server imports these before its backends open."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ..models import Scope


@dataclass(frozen=True, slots=True)
class Topic:
    """What a subscriber wants to hear about: a scope's events, or (scope None) a tenant's workspaces."""

    tenant: str
    scope: Scope | None = None


@dataclass(frozen=True, slots=True)
class EventWritten:
    tenant: str
    scope: Scope
    event_id: uuid.UUID
    seq: int


@dataclass(frozen=True, slots=True)
class WorkspaceChanged:
    """A workspace was created or changed. ``owner`` and ``agents`` say who may hear of it (None: sent by an
    older version, look them up); ``added`` and ``removed``: the agents this change put on or took off its roster."""

    tenant: str
    workspace_id: str
    created: bool
    owner: str | None = None
    agents: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


BusMessage = EventWritten | WorkspaceChanged
