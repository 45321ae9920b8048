"""Bearer tokens for our HTTP server, created in-process with the package's PostgresTokenStore."""

from __future__ import annotations

from mcp_shared_memory.stores.postgres import PostgresPool
from mcp_shared_memory.stores.tokens import PostgresTokenStore


async def create_tokens(database_url: str, tenant: str, agent_ids: list[str], scope: str) -> dict[str, str]:
    """One token per agent id, bound to ``tenant`` with ``scope`` as its only (and default) scope."""
    db = PostgresPool(database_url, min_size=1, max_size=1)
    await db.open(migrate=True)
    try:
        store = PostgresTokenStore(db)
        tokens = {}
        for agent_id in agent_ids:
            token, _ = await store.create(
                tenant=tenant, agent_id=agent_id, allowed_scopes=[scope], default_scope=scope, description="bench"
            )
            tokens[agent_id] = token
        return tokens
    finally:
        await db.close()
