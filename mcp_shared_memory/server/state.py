"""What the MCP handlers share: the runtime, the notification hub and who the caller is."""

from __future__ import annotations

import importlib
import logging
import traceback
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.subscriptions import ResourcesListChanged, ServerEvent
from prometheus_client import Counter

from .. import metrics
from ..errors import AccessDenied, ConfigError, InvalidInput, SharedMemoryError, StoreUnavailable, sole_error
from ..models import Principal, Scope
from ..settings import Settings
from .http_guard import TokenWatch
from .notifications import ListenerBus, NotificationHub

if TYPE_CHECKING:
    from ..memory import SharedMemory
    from ..runtime import Runtime

log = logging.getLogger(__name__)

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


# How long a request waits for backends still opening (a cold embedded start runs initdb), and how often
# backends that could not be reached are tried again.
READY_WAIT_SECONDS = 60.0
RETRY_FIRST_SECONDS, RETRY_MAX_SECONDS = 1.0, 30.0
STARTING = "the server is still opening its database and Redis; retry in a moment"
UNEXPECTED = "the server could not open its database and Redis (an internal error, in its log); retry later"


def origin(error: BaseException) -> str:
    """Where ``error`` was raised (file, line, function): for the log, which gets no stack trace."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "an unknown place"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


class AppState:
    """What the handlers share. Its backends may open after the server starts answering (stdio): until
    they are open ``runtime`` and ``hub`` raise ``StoreUnavailable``, and ``until_ready`` waits for them or
    raises what stopped them from opening."""

    def __init__(self, local_principal: Principal | None) -> None:
        self.local_principal = local_principal
        self._runtime: Runtime | None = None
        self._hub: NotificationHub | None = None
        self.failure: SharedMemoryError | None = None
        self._settled = anyio.Event()  # set once the backends opened or failed to

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            raise self.failure or StoreUnavailable(STARTING)
        return self._runtime

    @property
    def hub(self) -> NotificationHub:
        if self._hub is None:
            raise self.failure or StoreUnavailable(STARTING)
        return self._hub

    @property
    def memory(self) -> SharedMemory:
        return self.runtime.memory

    def attach(self, runtime: Runtime, hub: NotificationHub) -> None:
        self._runtime, self._hub, self.failure = runtime, hub, None
        self._settled.set()

    def detach(self) -> None:
        self._runtime = self._hub = None

    def fail(self, failure: SharedMemoryError) -> None:
        self.failure = failure
        self._settled.set()

    async def until_ready(self, seconds: float = READY_WAIT_SECONDS) -> None:
        """Return once the backends are open; raise the reason they are not (at once if an attempt failed)."""
        if self._runtime is not None:
            return
        if self.failure is None:
            with anyio.move_on_after(seconds):
                await self._settled.wait()
        if self._runtime is None:
            raise self.failure or StoreUnavailable(STARTING)

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
    ``token_watch`` (HTTP) it re-verifies the tokens of the requests in flight while the state is open.

    With ``background`` (stdio) the server answers at once and opens its backends behind the first
    answers: the database, Redis and embedding clients are imported in a worker thread, requests that need
    them wait (``AppState.until_ready``), and backends that cannot be reached are tried again with backoff.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        local_principal: Principal | None,
        runtime: Runtime | None = None,
        token_watch: TokenWatch | None = None,
        background: bool = False,
    ) -> None:
        self.settings = settings
        self.local_principal = local_principal
        self.listeners = CountedListenerBus()
        self.token_watch = token_watch
        self.background = background
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
        state = AppState(self.local_principal)
        async with anyio.create_task_group() as tasks:
            if self.background:
                tasks.start_soon(self._open_in_background, state)
                try:
                    async with self._published(state):
                        yield state
                finally:
                    tasks.cancel_scope.cancel()
                return
            async with self._backends(state), self._published(state):
                yield state

    @asynccontextmanager
    async def _published(self, state: AppState) -> AsyncIterator[None]:
        self.state = state
        assert self._opened is not None
        self._opened.set()
        try:
            yield
        finally:
            self.state = None

    @asynccontextmanager
    async def _backends(self, state: AppState) -> AsyncIterator[None]:
        """The runtime and the notification hub, attached to ``state`` while open."""
        async with self._runtime() as runtime, anyio.create_task_group() as tasks:
            hub = NotificationHub(runtime.bus, self.listeners, runtime.memory)
            await tasks.start(hub.run)
            if self.token_watch is not None:

                async def still_valid(token: str) -> bool:
                    return await runtime.tokens.verify(token) is not None

                await tasks.start(self.token_watch.run, still_valid)
            state.attach(runtime, hub)
            try:
                yield
            finally:
                state.detach()
                tasks.cancel_scope.cancel()

    async def _open_in_background(self, state: AppState) -> None:
        # Imported off the event loop, so the first requests are answered while they load.
        await anyio.to_thread.run_sync(importlib.import_module, "mcp_shared_memory.runtime")
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                async with self._backends(state):
                    await anyio.sleep_forever()
            except Exception as raised:
                exc = sole_error(raised) if isinstance(raised, ExceptionGroup) else raised
                if isinstance(exc, SharedMemoryError) and not isinstance(exc, StoreUnavailable):
                    state.fail(exc)
                    log.error("%s", exc.message)
                    return
                if isinstance(exc, StoreUnavailable):
                    state.fail(exc)
                    log.warning("%s; trying again in %.0f s", exc.message, delay)
                else:  # a fault of ours, not an outage: said, retried, never fatal to the server
                    state.fail(StoreUnavailable(UNEXPECTED))
                    log.error(
                        "opening the backends failed (%s at %s); trying again in %.0f s",
                        type(exc).__name__, origin(exc), delay,
                    )  # fmt: skip
                await anyio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX_SECONDS)

    @asynccontextmanager
    async def _runtime(self) -> AsyncIterator[Runtime]:
        if self._given_runtime is not None:
            yield self._given_runtime
            return
        from ..runtime import open_runtime

        async with open_runtime(self.settings, background=True) as runtime:
            yield runtime
