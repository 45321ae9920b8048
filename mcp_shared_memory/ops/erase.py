"""``mcp-shared-memory erase``: a user's scope, an agent's events or a whole tenant, everywhere it is stored
(PostgreSQL, the Redis cache, the facts in pgvector or Qdrant), recorded in the audit log.

The audit row names what was erased and how many events went (never content). The tenant's earlier audit
rows are kept: they hold no content, and they are the record that the data existed and was erased.
"""

from __future__ import annotations

import getpass
import time
from dataclasses import dataclass

from ..runtime import Connections
from ..settings import Settings
from ..stores.audit import AuditEntry, PostgresAuditLog
from ..stores.erasure import ErasureTarget, erase_postgres, erase_qdrant, erase_redis


@dataclass(frozen=True, slots=True)
class ErasureReport:
    target: ErasureTarget
    events: int
    facts: int
    workspaces: int
    tokens: int
    redis_keys: int

    def summary(self) -> str:
        parts = [f"{self.events} events", f"{self.facts} facts", f"{self.redis_keys} cached keys"]
        if self.workspaces:
            parts.append(f"{self.workspaces} workspaces")
        if self.tokens:
            parts.append(f"{self.tokens} tokens")
        return f"erased {self.target.describe()}: " + ", ".join(parts)


def operator() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "operator"


async def erase(settings: Settings, connections: Connections, target: ErasureTarget) -> ErasureReport:
    """Erase ``target``; PostgreSQL first (one transaction), then the Qdrant facts and the Redis cache. When a
    later step fails its error says so, and running the same erase again completes it."""
    started = time.perf_counter()
    rows = await erase_postgres(connections.db, target)
    facts = rows.facts
    if settings.qdrant_url:
        from ..stores.facts_qdrant import QdrantFactsStore

        embedder = connections.embedder
        store = QdrantFactsStore.from_settings(settings, model_id=embedder.model_id, dimension=embedder.dimension)
        try:
            facts += await erase_qdrant(store.client, target)
        finally:
            await store.close()
    keys = await erase_redis(connections.redis, prefix=settings.redis_prefix, target=target, scopes=rows.scopes)
    report = ErasureReport(target, rows.events, facts, rows.workspaces, rows.tokens, keys)
    audit = PostgresAuditLog(connections.db)
    audit.record(
        AuditEntry(
            tenant_id=target.tenant, agent_id=operator(), agent_type="operator", token_id=None, method="erase",
            target=f"agent:{target.agent_id}" if target.agent_id else (str(target.scope) if target.scope else "tenant"),
            scope=str(target.scope) if target.scope else None, outcome="ok", result_count=rows.events,
            latency_ms=(time.perf_counter() - started) * 1000, transport="cli",
        )
    )  # fmt: skip
    await audit.flush()
    return report
