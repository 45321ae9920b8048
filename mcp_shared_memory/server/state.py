"""What the MCP handlers share: the memory, the notification hub and who the caller is."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token

from ..consolidation import Consolidator
from ..errors import AccessDenied, SharedMemoryError
from ..memory import SharedMemory
from ..models import Principal, Scope
from ..runtime import open_memory
from ..settings import Settings
from ..stores.tokens import PostgresTokenStore
from .notifications import NotificationHub, TenantBus

CLAIM_PRINCIPAL = "msm_principal"
REPUBLISH_INTERVAL = 5.0
EMBED_MISSING_EVERY = 6  # passes: every 30 s
log = logging.getLogger(__name__)


async def consolidate_periodically(memory: SharedMemory, interval: float) -> None:
    """Every process may run this: the per-scope advisory lock lets one of them do each scope."""
    consolidator = Consolidator.from_memory(memory)
    while True:
        await anyio.sleep(interval)
        try:
            report = await consolidator.run()
            if report.events:
                log.info("consolidated %d events: %d facts stored, %d confirmed", report.events, report.stored,
                         report.confirmed)  # fmt: skip
        except SharedMemoryError as exc:
            log.warning("consolidation skipped: %s", exc.message)


async def repair_periodically(memory: SharedMemory) -> None:
    """Catch up what a failing dependency left behind: Redis updates of committed events (every few
    seconds) and vectors of events written while the embedder was failing."""
    passes = 0
    while True:
        await anyio.sleep(REPUBLISH_INTERVAL)
        passes += 1
        try:
            if done := await memory.republish_pending():
                log.info("published %d events whose Redis update had failed", done)
            if passes % EMBED_MISSING_EVERY == 0 and (done := await memory.embed_missing()):
                log.info("embedded %d events stored without a vector", done)
        except SharedMemoryError as exc:
            log.warning("repair pass skipped: %s", exc.message)


def stdio_principal(settings: Settings) -> Principal:
    return Principal(
        tenant=settings.tenant,
        agent_id=settings.agent_id,
        agent_type=settings.agent_type,
        allowed_scopes=settings.scope_patterns(),
        default_scope=Scope.parse(settings.default_scope),
    )


@dataclass
class AppState:
    memory: SharedMemory
    hub: NotificationHub
    tokens: PostgresTokenStore
    local_principal: Principal | None

    def principal(self) -> Principal:
        """The caller: from the verified bearer token on HTTP, from the process binding on stdio."""
        token = get_access_token()
        if token is not None:
            principal = (token.claims or {}).get(CLAIM_PRINCIPAL)
            if isinstance(principal, Principal):
                return principal
            raise AccessDenied("the bearer token carries no identity")
        if self.local_principal is None:
            raise AccessDenied("this connection is not authenticated")
        return self.local_principal


class ServerRuntime:
    """Opens the state once per process (HTTP) or per stdio connection."""

    def __init__(self, settings: Settings, *, local_principal: Principal | None) -> None:
        self.settings = settings
        self.local_principal = local_principal
        self.bus = TenantBus()
        self.state: AppState | None = None

    @asynccontextmanager
    async def open(self) -> AsyncIterator[AppState]:
        if self.state is not None:
            yield self.state
            return
        async with open_memory(self.settings) as memory, anyio.create_task_group() as tg:
            hub = NotificationHub(memory.cache.redis, memory.cache.keys, self.bus)
            await tg.start(hub.run)
            tg.start_soon(repair_periodically, memory)
            if self.settings.consolidation_interval > 0:
                tg.start_soon(consolidate_periodically, memory, self.settings.consolidation_interval)
            self.state = AppState(
                memory=memory, hub=hub, tokens=PostgresTokenStore(memory.episodic.db),
                local_principal=self.local_principal,
            )  # fmt: skip
            try:
                yield self.state
            finally:
                self.state = None
                tg.cancel_scope.cancel()
                await hub.close()
