"""What the MCP handlers share: the runtime, the notification hub and who the caller is."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.subscriptions import ResourcesListChanged, ServerEvent
from prometheus_client import Counter

from .. import metrics
from ..errors import AccessDenied, ConfigError, InvalidInput
from ..memory import SharedMemory
from ..models import Principal, Scope
from ..runtime import Runtime, open_runtime
from ..settings import Settings
from .http_guard import TokenWatch
from .notifications import ListenerBus, NotificationHub

CLAIM_PRINCIPAL = "msm_principal"


def stdio_principal(settings: Settings) -> Principal:
    """The stdio binding: its grants are ``MSM_ALLOWED_SCOPES`` (``Grant``), else its own scope and every
    workspace, read and write."""
    try:
        return Principal(
            tenant=settings.tenant,
            agent_id=settings.agent_id,
            agent_type=settings.agent_type,
            allowed_scopes=settings.scope_patterns(),
            default_scope=Scope.parse(settings.default_scope),
        )
    except InvalidInput as exc:
        raise ConfigError(
            f"the stdio binding (MSM_TENANT, MSM_AGENT_ID, MSM_SCOPE, MSM_ALLOWED_SCOPES): {exc.message}"
        ) from None


@dataclass
class AppState:
    runtime: Runtime
    hub: NotificationHub
    local_principal: Principal | None

    @property
    def memory(self) -> SharedMemory:
        return self.runtime.memory

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


class CountedListenerBus(ListenerBus):
    """Counts what the listen streams are handed (``msm_notifications_sent_total``)."""

    def subscribe(self, listener: Callable[[ServerEvent], None]) -> Callable[[], None]:
        def counted(event: ServerEvent) -> None:
            listener(event)
            notification_kind(event).inc()

        return super().subscribe(counted)


def notification_kind(event: ServerEvent) -> Counter:
    kind = "list_changed" if isinstance(event, ResourcesListChanged) else "resource_updated"
    return metrics.notifications_sent.labels(kind)


class ServerLifespan:
    """Opens the state once per process (HTTP) or per stdio connection. With ``runtime`` given (tests,
    embedding the server in another program) the server uses it instead of opening its own. With
    ``token_watch`` (HTTP) it re-verifies the tokens of the requests in flight while the state is open."""

    def __init__(
        self,
        settings: Settings,
        *,
        local_principal: Principal | None,
        runtime: Runtime | None = None,
        token_watch: TokenWatch | None = None,
    ) -> None:
        self.settings = settings
        self.local_principal = local_principal
        self.listeners = CountedListenerBus()
        self.token_watch = token_watch
        self._given_runtime = runtime
        self.state: AppState | None = None
        self._holders = 0
        self._opened: anyio.Event | None = None
        self._released = anyio.Event()

    @asynccontextmanager
    async def open(self) -> AsyncIterator[AppState]:
        """The first opener opens the state and later ones share it; the first opener closes it, after
        every later opener has left (a connection outliving the first one keeps its notifications)."""
        self._holders += 1
        try:
            if self._opened is not None:
                await self._opened.wait()
                if self.state is None:
                    raise RuntimeError("the server state failed to open")
                yield self.state
                return
            self._opened = anyio.Event()
            try:
                async with self._open_state() as state:
                    yield state
                    while self._holders > 1:
                        self._released = anyio.Event()
                        await self._released.wait()
            finally:
                self._opened.set()
                self._opened = None
        finally:
            self._holders -= 1
            self._released.set()

    @asynccontextmanager
    async def _open_state(self) -> AsyncIterator[AppState]:
        async with self._runtime() as runtime, anyio.create_task_group() as tasks:
            hub = NotificationHub(runtime.bus, self.listeners, runtime.memory)
            await tasks.start(hub.run)
            if self.token_watch is not None:

                async def still_valid(token: str) -> bool:
                    return await runtime.tokens.verify(token) is not None

                await tasks.start(self.token_watch.run, still_valid)
            self.state = AppState(runtime=runtime, hub=hub, local_principal=self.local_principal)
            assert self._opened is not None
            self._opened.set()
            try:
                yield self.state
            finally:
                self.state = None
                tasks.cancel_scope.cancel()

    @asynccontextmanager
    async def _runtime(self) -> AsyncIterator[Runtime]:
        if self._given_runtime is not None:
            yield self._given_runtime
            return
        async with open_runtime(self.settings, background=True) as runtime:
            yield runtime
