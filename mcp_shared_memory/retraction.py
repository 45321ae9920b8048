"""Retracting an event: an agent takes back what it wrote (a mistake, a leaked value the redaction missed).

Who may: the event's author, with the write role on its scope (and, in a workspace, as its owner or a
member); a connection with the admin role on the scope (a grant such as ``workspace:<id>=rwa``) may retract
any agent's event there, as it may manage the workspace. Another agent's event is refused, naming its
author, and a tenant's events are never seen from another tenant (the store's query and row-level security).

A retracted event is deleted from PostgreSQL (its outbox row with it), removed from the scope's recent
cache, and the scope's subscribers are notified (``resources/updated``: they re-read the scope). Facts
consolidated from it keep their text; ``forget_fact`` removes those. The MCP call is audited like every
tool call (``retract_event``, never the content).
"""

from __future__ import annotations

from .announcer import Announcer
from .errors import AccessDenied, NotFound
from .models import Event, EventRef, Principal, Scope, event_ref
from .stores.episodic import PostgresEpisodicStore


async def retract_event(
    principal: Principal,
    scope: Scope,
    event_id: str | EventRef,
    *,
    episodic: PostgresEpisodicStore,
    announcer: Announcer,
) -> Event:
    """Delete the event ``event_id`` names (its id, or its seq as listings show it: ``#42``) from ``scope``
    (already checked for the write role and workspace membership); returns the event as it was."""
    parsed = event_ref(event_id)
    tenant = principal.tenant
    admin = principal.role_for(scope) == "admin"
    gone = await episodic.retract(tenant, scope, parsed, agent_id=None if admin else principal.agent_id)
    if gone is None:
        existing = await episodic.get(tenant, scope, parsed)
        if existing is not None:
            raise AccessDenied(
                f"event {event_id} was written by agent {existing.agent_id}: an agent retracts only its own events "
                f"(a connection with the admin role on {scope}, e.g. '{scope}=rwa', may retract any)"
            )
        raise NotFound(f"event {event_id} does not exist in scope {scope}")
    await announcer.removed(tenant, scope, [(gone.id, gone.seq)])
    return gone
