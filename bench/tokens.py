"""Bearer tokens for our HTTP server, created in-process through the package's admin runtime."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .context import Backends


async def create_tokens(backends: Backends, tenant: str, agent_ids: list[str], scope: str) -> dict[str, str]:
    """One token per agent id, bound to ``tenant`` with ``scope`` as its only (and default) scope."""
    from mcp_shared_memory.runtime import open_admin

    async with open_admin(backends.settings()) as admin:
        tokens = {}
        for agent_id in agent_ids:
            token, _ = await admin.tokens.create(
                tenant=tenant, agent_id=agent_id, allowed_scopes=[scope], default_scope=scope, description="bench"
            )
            tokens[agent_id] = token
        return tokens
