"""``completion/complete``: values for the arguments of this server's prompts and resource templates.

Arguments are completed by name, whatever the prompt or template (an argument added later completes
too): ``tenant`` (the caller's own), ``scope`` (``user:<id>`` / ``workspace:<id>``), ``scope_type``,
``scope_id`` (by the ``scope_type`` already chosen), ``workspace_id``, and, in the scope named by the
arguments already chosen (or the connection's default), ``agent_id`` and ``event_type`` as seen in its
recent events. Every value comes from what the caller may read, through the same domain calls its reads
make (``SharedMemory.list_workspaces``, ``get_recent_shared``): a workspace it cannot read, another
tenant's scope, an agent of a scope it cannot read never appears. A caller the domain refuses gets no
values, never an error that tells why.

User scopes come from the caller's grants (an exact ``user:<id>``) and its default scope; a wildcard grant
(``user:*``) names no user, so none is listed for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from mcp.types import (
    CompleteRequestParams,
    CompleteResult,
    Completion,
    PromptReference,
    ResourceTemplateReference,
)

from ..errors import SharedMemoryError
from ..models import SCOPE_TYPES, Principal, Scope
from .state import AppState

MAX_VALUES = 100  # the protocol's cap per response
WORKSPACES_SCANNED = 200
EVENTS_SCANNED = 200


class Completer:
    """Answers completion requests for the prompts and templates the server registered."""

    def __init__(self, *, prompts: Iterable[str], templates: Iterable[str]) -> None:
        self._prompts = frozenset(prompts)
        self._templates = frozenset(templates)

    async def complete(self, state: AppState, params: CompleteRequestParams) -> CompleteResult:
        ref = params.ref
        ours = (isinstance(ref, PromptReference) and ref.name in self._prompts) or (
            isinstance(ref, ResourceTemplateReference) and ref.uri in self._templates
        )
        values: list[str] = []
        if ours:
            context = params.context.arguments if params.context and params.context.arguments else {}
            try:
                values = await self.values(state.principal(), state, params.argument.name, context)
            except SharedMemoryError:
                values = []
        return CompleteResult(completion=matching(values, params.argument.value))

    async def values(self, principal: Principal, state: AppState, name: str, context: Mapping[str, str]) -> list[str]:
        memory = state.memory
        if name == "tenant":
            return [principal.tenant]
        if name == "scope_type":
            return [
                t
                for t in SCOPE_TYPES
                if any(g.pattern == "*" or g.pattern.startswith(f"{t}:") for g in principal.grants)
            ]
        if name == "scope":
            workspaces = await workspace_ids(state, principal)
            return [str(s) for s in user_scopes(principal)] + [f"workspace:{w}" for w in workspaces]
        if name == "scope_id":
            if context.get("scope_type") == "workspace":
                return await workspace_ids(state, principal)
            if context.get("scope_type") in (None, "user"):
                return [s.id for s in user_scopes(principal)]
            return []
        if name == "workspace_id":
            return await workspace_ids(state, principal)
        if name in ("agent_id", "event_type"):
            scope = scope_in(context)
            events = await memory.get_recent_shared(principal, scope=scope, limit=EVENTS_SCANNED)
            return [e.agent_id if name == "agent_id" else e.event_type for e in events]
        return []


def user_scopes(principal: Principal) -> list[Scope]:
    """The user scopes the caller's grants name exactly and may read, and its default scope."""
    found: list[Scope] = []
    candidates = [principal.default_scope] if principal.default_scope else []
    for grant in principal.grants:
        kind, _, ident = grant.pattern.partition(":")
        if kind == "user" and ident and not ident.endswith("*"):
            candidates.append(Scope("user", ident))
    for scope in candidates:
        if scope.type == "user" and principal.may_use(scope) and scope not in found:
            found.append(scope)
    return found


async def workspace_ids(state: AppState, principal: Principal) -> list[str]:
    """The workspaces the caller reads (member and granted), as the workspaces resource lists them."""
    return [w.id for w in await state.memory.list_workspaces(principal, limit=WORKSPACES_SCANNED)]


def scope_in(context: Mapping[str, Any]) -> str | None:
    """The scope the arguments already chosen name (``scope``, or ``scope_type`` with ``scope_id``, or a
    ``workspace_id``); None: the connection's default."""
    if isinstance(scope := context.get("scope"), str) and scope:
        return scope
    kind, ident = context.get("scope_type"), context.get("scope_id")
    if isinstance(kind, str) and isinstance(ident, str) and kind and ident:
        return f"{kind}:{ident}"
    if isinstance(workspace := context.get("workspace_id"), str) and workspace:
        return f"workspace:{workspace}"
    return None


def matching(values: Iterable[str], prefix: str) -> Completion:
    """The distinct values starting with ``prefix`` (case-insensitively), sorted, at most ``MAX_VALUES``."""
    wanted = prefix.casefold()
    found = sorted({v for v in values if v.casefold().startswith(wanted)})
    return Completion(values=found[:MAX_VALUES], total=len(found), has_more=len(found) > MAX_VALUES)
