"""Resource URIs. The tenant is part of every URI, so a notification can never cross tenants."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..models import IDENTIFIER, Scope

RECENT_TEMPLATE = "memory://{tenant}/{scope_type}/{scope_id}/recent"
CONTEXT_TEMPLATE = "memory://{tenant}/workspace/{workspace_id}/context"
WORKSPACES_TEMPLATE = "memory://{tenant}/workspaces"

# Matched with fullmatch: "$" would also accept a URI with a trailing newline.
_ID = IDENTIFIER.pattern.strip("^$")
_RECENT = re.compile(rf"memory://(?P<tenant>{_ID})/(?P<scope_type>user|workspace)/(?P<scope_id>{_ID})/recent")
_CONTEXT = re.compile(rf"memory://(?P<tenant>{_ID})/workspace/(?P<workspace_id>{_ID})/context")
_WORKSPACES = re.compile(rf"memory://(?P<tenant>{_ID})/workspaces")


def recent_uri(tenant: str, scope: Scope) -> str:
    return f"memory://{tenant}/{scope.type}/{scope.id}/recent"


def context_uri(tenant: str, workspace_id: str) -> str:
    return f"memory://{tenant}/workspace/{workspace_id}/context"


def workspaces_uri(tenant: str) -> str:
    return f"memory://{tenant}/workspaces"


@dataclass(frozen=True)
class ParsedUri:
    tenant: str
    kind: str  # "recent" | "context" | "workspaces"
    scope: Scope | None = None


def parse_uri(uri: str) -> ParsedUri | None:
    if m := _RECENT.fullmatch(uri):
        return ParsedUri(m["tenant"], "recent", Scope(m["scope_type"], m["scope_id"]))  # type: ignore[arg-type]
    if m := _CONTEXT.fullmatch(uri):
        return ParsedUri(m["tenant"], "context", Scope("workspace", m["workspace_id"]))
    if m := _WORKSPACES.fullmatch(uri):
        return ParsedUri(m["tenant"], "workspaces")
    return None
