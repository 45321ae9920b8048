"""What every HTTP request passes before the MCP transport: Host/Origin validation (DNS rebinding), a limit
on failed bearer-token authentications per client address, and 503 instead of 401 when the token store is
unavailable (a 401 tells clients to drop a good token)."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import StoreUnavailable
from ..settings import Settings

log = logging.getLogger(__name__)

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
DEFAULT_PORTS = {"http": 80, "https": 443}
RETRY_AFTER_UNAVAILABLE = 5  # seconds; the pool's reconnect attempts take about as long
UNGUARDED_PATHS = frozenset({"/healthz"})  # probes address the pod by IP; the answer reveals nothing


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


class HttpGuard:
    """ASGI middleware placed outside the SDK's authentication middleware, so that it sees the token
    verifier's ``StoreUnavailable`` and the 401 that follows a bad token."""

    def __init__(self, app: ASGIApp, *, peers: AllowedPeers, limiter: AuthFailureLimiter) -> None:
        self.app = app
        self.peers = peers
        self.limiter = limiter

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

        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] == 401:
                    self.limiter.record(address)
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except StoreUnavailable as exc:
            if started:
                raise
            log.warning("token verification unavailable: %s", exc.message)
            await _respond(send, 503, "temporarily_unavailable", "The token store is unavailable; retry later",
                           retry_after=RETRY_AFTER_UNAVAILABLE)  # fmt: skip


async def _respond(send: Send, status: int, error: str, description: str, *, retry_after: int | None = None) -> None:
    body = json.dumps({"error": error, "error_description": description}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(max(retry_after, 1)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
