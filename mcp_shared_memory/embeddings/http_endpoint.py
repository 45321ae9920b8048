"""JSON over HTTP with retries: the small part of an API client that ``OpenAIEmbedder`` needs.

``httpx2`` (the MCP SDK's own HTTP client) instead of the ``openai`` package: that one costs ~12 MB and ~0.3 s
of import in every server process and adds per-request overhead on the search hot path. The error classes
keep the ``openai`` names so the server log reads the same.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from pathlib import Path
from typing import Any

import httpx2 as httpx  # the HTTP client the MCP SDK is built on: loaded already, costs nothing more

logger = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 429})  # and every 5xx
MAX_BACKOFF = 8.0
MAX_RETRY_AFTER = 60.0


class APIError(Exception):
    """A request that failed for good. ``detail`` (the transport's or the server's text) is for the log only."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class APIConnectionError(APIError):
    """The endpoint could not be reached, or the connection broke."""


class APITimeoutError(APIConnectionError):
    """The request timed out."""


class APIStatusError(APIError):
    """The endpoint answered with an error status."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code


class APIResponseValidationError(APIError):
    """The endpoint answered 2xx with a body that is not what the API specifies."""


class JsonEndpoint:
    """``POST`` JSON to one URL through one pooled ``httpx.AsyncClient``; ``socket_path`` for a unix socket.

    Timeouts, transport errors and HTTP 408, 409, 429 and 5xx are retried up to ``max_retries`` times, with
    exponential backoff and jitter, or after the answer's ``Retry-After`` (seconds, 0 to 60).
    """

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str],
        timeout: float,
        max_retries: int,
        socket_path: Path | None = None,
    ) -> None:
        self.url = url
        self.max_retries = max_retries
        if socket_path is None:
            self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(timeout))
        else:
            # Plain HTTP on a local socket: no TLS context to build (~25 ms) and no proxy from the environment.
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path), verify=False)
            self._client = httpx.AsyncClient(
                transport=transport, headers=headers, timeout=httpx.Timeout(timeout), trust_env=False
            )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post(self, body: object, *, max_retries: int | None = None, headers: dict[str, str] | None = None) -> Any:
        """The decoded JSON answer; raises an ``APIError`` once the retries are spent."""
        retries = self.max_retries if max_retries is None else max_retries
        content = json.dumps(body)
        attempt = 0
        while True:
            retry_after: float | None = None
            try:
                response = await self._client.post(self.url, content=content, headers=headers)
            except httpx.TimeoutException as exc:
                error: APIError = APITimeoutError(_describe(exc))
            except httpx.TransportError as exc:
                error = APIConnectionError(_describe(exc))
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # a malformed URL, say: retrying cannot help
                raise APIConnectionError(_describe(exc)) from None
            else:
                status = response.status_code
                if response.is_success:
                    try:
                        return json.loads(response.content)
                    except ValueError:  # not JSON, or not UTF-8
                        raise APIResponseValidationError(f"HTTP {status}, not JSON: {response.text}") from None
                error = APIStatusError(status, response.text)
                if status not in RETRY_STATUSES and status < 500:
                    raise error
                retry_after = _retry_after(response)
            if attempt >= retries:
                raise error
            delay = retry_after if retry_after is not None else backoff(attempt)
            reason = f"HTTP {error.status_code}" if isinstance(error, APIStatusError) else type(error).__name__
            logger.info("embedding request failed (%s); retry %d in %.2f s", reason, attempt + 1, delay)
            await asyncio.sleep(delay)
            attempt += 1


def backoff(attempt: int) -> float:
    """Seconds before retry ``attempt + 1``: 0.5 s doubling up to 8 s, minus up to a quarter of jitter."""
    return min(0.5 * 2.0**attempt, MAX_BACKOFF) * random.uniform(0.75, 1.0)


def _retry_after(response: httpx.Response) -> float | None:
    try:
        seconds = float(response.headers.get("retry-after", ""))
    except ValueError:  # absent, or an HTTP date: use the backoff
        return None
    return seconds if 0 <= seconds <= MAX_RETRY_AFTER else None


def _describe(exc: Exception) -> str:
    """The transport error and what it wraps, for the log."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause) not in text:
        text = f"{text} ({type(cause).__name__}: {cause})"
    return text
