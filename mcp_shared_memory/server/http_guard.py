"""What every HTTP request passes before the MCP transport: Host/Origin validation (DNS rebinding), a limit
on failed bearer-token authentications per client address (each failure audited, within that limit), 503
instead of 401 when the token store is unavailable (a 401 tells clients to drop a good token), and the end
of the requests in flight, streams included, of a token revoked or expired meanwhile."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import anyio.abc
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import StoreUnavailable
from ..settings import Settings

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443}
RETRY_AFTER_UNAVAILABLE = 5  # seconds; the pool's reconnect attempts take about as long
UNGUARDED_PATHS = frozenset({"/healthz"})  # probes address the pod by IP; the answer reveals nothing
# How often the tokens of requests in flight are verified again. With the token store's cache (5 s), a
# stream of a revoked or expired token ends within about 7 s.
RECHECK_SECONDS = 2.0
# Failed authentications audited per minute over all addresses (each address is bounded by the limiter):
# a flood from many addresses cannot fill the audit table.
AUDITED_FAILURES_PER_MINUTE = 600
SESSION_HEADER = "mcp-session-id"

TokenCheck = Callable[[str], Awaitable[bool]]


@dataclass(frozen=True)
class AllowedPeers:
    """Host and Origin values accepted, lower-case; an entry ending in ``:*`` accepts any port."""

    hosts: tuple[str, ...]
    origins: tuple[str, ...]

    @classmethod
    def from_settings(cls, settings: Settings) -> AllowedPeers:
        port = settings.port
        # A loopback name in Host means the client itself dialled loopback, which rebinding cannot fake;
        # any port, since local forwarders (ssh -L, a test proxy) listen on ports of their own.
        hosts = [f"{name}:*" for name in LOOPBACK_NAMES] + list(LOOPBACK_NAMES)
        if settings.host not in ("0.0.0.0", "::", *LOOPBACK_NAMES, "::1"):
            hosts.append(f"{settings.host}:{port}")  # bound to one address: clients may name it
        # Browser-based clients on this machine (the Inspector's page on its own port) are not a rebinding risk.
        origins = [f"http://{name}:*" for name in LOOPBACK_NAMES] + [f"http://{name}" for name in LOOPBACK_NAMES]
        if settings.public_url:
            public = urlsplit(settings.public_url)
            hostname = (public.hostname or "").lower()
            if ":" in hostname:
                hostname = f"[{hostname}]"
            explicit = public.port
            default = DEFAULT_PORTS.get(public.scheme)
            if explicit is None or explicit == default:
                hosts += [hostname, f"{hostname}:{default}"] if default else [hostname]
                origins.append(f"{public.scheme}://{hostname}")
            else:
                hosts.append(f"{hostname}:{explicit}")
                origins.append(f"{public.scheme}://{hostname}:{explicit}")
        hosts += _listed(settings.allowed_hosts)
        origins += [origin.rstrip("/") for origin in _listed(settings.allowed_origins)]
        return cls(hosts=tuple(dict.fromkeys(hosts)), origins=tuple(dict.fromkeys(origins)))

    def host_allowed(self, host: str | None) -> bool:
        return host is not None and _matches(host.lower(), self.hosts)

    def origin_allowed(self, origin: str | None) -> bool:
        return origin is None or _matches(origin.lower(), self.origins)  # no Origin: not a browser


def _listed(value: str | None) -> list[str]:
    return [item.strip().lower() for item in (value or "").split(",") if item.strip()]


def _matches(value: str, allowed: tuple[str, ...]) -> bool:
    for entry in allowed:
        if value == entry:
            return True
        if entry.endswith(":*"):
            base, _, port = value.rpartition(":")
            if base == entry[:-2] and port.isdigit():
                return True
    return False


class AuthFailureLimiter:
    """Failed authentications per client address in a sliding window, in this process only (replicas
    each keep their own count). The least recently failing addresses are forgotten beyond ``max_addresses``."""

    def __init__(
        self,
        limit: int,
        *,
        window: float = 60.0,
        max_addresses: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self.clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it is under the limit."""
        failures = self._failures.get(address)
        if failures is None:
            return None
        now = self.clock()
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            del self._failures[address]
            return None
        if len(failures) < self.limit:
            return None
        return failures[-self.limit] + self.window - now

    def record(self, address: str) -> None:
        failures = self._failures.setdefault(address, deque(maxlen=self.limit))
        failures.append(self.clock())
        self._failures.move_to_end(address)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)


class TokenWatch:
    """The requests in flight of each bearer token. While a token has any, ``run`` verifies it again every
    ``interval`` seconds and cancels the requests of a token revoked or expired since: a long-lived stream
    (a legacy GET stream, a ``subscriptions/listen`` stream) does not outlive its credential."""

    def __init__(self, *, interval: float = RECHECK_SECONDS) -> None:
        self.interval = interval
        self._open: dict[str, dict[object, anyio.CancelScope]] = {}

    @contextmanager
    def holding(self, token: str, request: anyio.CancelScope) -> Iterator[None]:
        key = object()
        self._open.setdefault(token, {})[key] = request
        try:
            yield
        finally:
            requests = self._open.get(token, {})
            requests.pop(key, None)
            if not requests:
                self._open.pop(token, None)

    async def run(
        self, check: TokenCheck, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Sweep every ``interval`` seconds until cancelled; never raises (it lives as long as the server)."""
        task_status.started()
        while True:
            await anyio.sleep(self.interval)
            try:
                await self.sweep(check)
            except Exception:
                log.exception("re-verifying the tokens of open requests failed; retrying")

    async def sweep(self, check: TokenCheck) -> int:
        """Verify each token with requests in flight; cancel those of a token no longer valid (how many)."""
        ended = 0
        for token in list(self._open):
            try:
                valid = await check(token)
            except StoreUnavailable:
                return ended  # the store is down: streams go on until it can answer again
            if not valid:
                for request in self._open.pop(token, {}).values():
                    request.cancel()
                    ended += 1
        if ended:
            log.info("ended %d requests of revoked or expired tokens", ended)
        return ended


class HttpGuard:
    """ASGI middleware placed outside the SDK's authentication middleware, so that it sees the token
    verifier's ``StoreUnavailable`` and the 401 that follows a bad token. ``record_failure(address,
    latency_ms)`` audits a refused token; ``end_session(scope)`` ends the MCP session of a request whose
    token was revoked or expired while it was in flight."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        peers: AllowedPeers,
        limiter: AuthFailureLimiter,
        watch: TokenWatch | None = None,
        record_failure: Callable[[str, float], None] | None = None,
        end_session: Callable[[Scope], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self.peers = peers
        self.limiter = limiter
        self.watch = watch or TokenWatch()
        self.record_failure = record_failure
        self.end_session = end_session
        self.audit_budget = AuthFailureLimiter(AUDITED_FAILURES_PER_MINUTE, max_addresses=1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGUARDED_PATHS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.peers.host_allowed(headers.get("host")):
            log.warning("refused a request for Host %r", headers.get("host"))
            await _respond(send, 421, "misdirected_request", "Invalid Host header")
            return
        if not self.peers.origin_allowed(headers.get("origin")):
            log.warning("refused a request from Origin %r", headers.get("origin"))
            await _respond(send, 403, "forbidden", "Invalid Origin header")
            return
        if "authorization" not in headers:
            await self.app(scope, receive, send)
            return

        address = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.limiter.retry_after(address)
        if wait is not None:
            await _respond(send, 429, "too_many_requests", "Too many failed authentications; retry later",
                           retry_after=math.ceil(wait))  # fmt: skip
            return

        arrived = time.perf_counter()
        response = {"started": False, "finished": False}

        async def watched_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                response["started"] = True
                if message["status"] == 401:
                    self._failed(address, arrived)
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                response["finished"] = True
            await send(message)

        token = headers["authorization"].partition(" ")[2].strip()
        try:
            with anyio.CancelScope() as request, self.watch.holding(token, request):
                await self.app(scope, receive, watched_send)
        except StoreUnavailable as exc:
            if response["started"]:
                raise
            log.warning("token verification unavailable: %s", exc.message)
            await _respond(send, 503, "temporarily_unavailable", "The token store is unavailable; retry later",
                           retry_after=RETRY_AFTER_UNAVAILABLE)  # fmt: skip
            return
        if request.cancelled_caught:
            await self._ended(scope, send, response)

    def _failed(self, address: str, arrived: float) -> None:
        """A token was refused: counted against the address, and audited while under the overall budget."""
        self.limiter.record(address)
        if self.record_failure is not None and self.audit_budget.retry_after("all") is None:
            self.audit_budget.record("all")
            self.record_failure(address, (time.perf_counter() - arrived) * 1000)

    async def _ended(self, scope: Scope, send: Send, response: dict[str, bool]) -> None:
        """The request's token was revoked or expired while it was in flight: finish its response (a
        stream just ends) and end the MCP session it belongs to."""
        # The client may be gone already: nothing to finish then.
        with suppress(OSError, RuntimeError):
            if not response["started"]:
                await _respond(send, 401, "invalid_token", "The token was revoked or has expired")
            elif not response["finished"]:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.end_session is not None and SESSION_HEADER in Headers(scope=scope):
            with anyio.CancelScope(shield=True):
                await self.end_session(scope)


async def _respond(send: Send, status: int, error: str, description: str, *, retry_after: int | None = None) -> None:
    body = json.dumps({"error": error, "error_description": description}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(max(retry_after, 1)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
