"""OpenAI embeddings, or any OpenAI-compatible endpoint (Ollama, vLLM, LM Studio, TEI) via ``base_url``."""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import SecretStr

from ..errors import ConfigError, EmbeddingUnavailable, SharedMemoryError
from ..vectors import Vector, as_vector, from_float32_bytes
from .base import PRIORITY_HEADER, URGENT, Embedder
from .http_endpoint import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    JsonEndpoint,
)

logger = logging.getLogger(__name__)

KNOWN_DIMENSIONS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
    "all-MiniLM-L6-v2": 384,  # the machine's embedding service (embeddings/service_app.py)
}
# The host part of requests over a unix socket (httpx needs one; the socket decides where they go).
SOCKET_BASE_URL = "http://embedding-service/v1"
URGENT_HEADERS = {PRIORITY_HEADER: URGENT}
DEFAULT_BASE_URL = "https://api.openai.com/v1"
_PROBE_TEXT = "dimension probe"


def safe_url(url: str | None) -> str:
    """``scheme://host[:port]/path`` without credentials or query, for messages."""
    if not url:
        return "api.openai.com"
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "the configured OPENAI_BASE_URL"
    return f"{parts.scheme}://{host}{port}{parts.path}".rstrip("/")


class OpenAIEmbedder(Embedder):
    """Embeddings from ``POST {base_url}/embeddings``; one request per coalesced batch.

    With ``socket_path`` the endpoint is a local server on that unix socket (the machine's embedding
    service). ``encoding_format="base64"`` moves vectors as packed float32, cheaper to encode and parse.
    """

    def __init__(
        self,
        *,
        model: str = "text-embedding-3-small",
        api_key: SecretStr | str | None = None,
        base_url: str | None = None,
        dimensions: int | None = None,
        batch_size: int = 32,
        timeout: float = 30.0,
        max_retries: int = 2,
        max_chars: int = 8000,
        socket_path: Path | None = None,
        encoding_format: Literal["float", "base64"] = "float",
    ) -> None:
        super().__init__(batch_size=min(batch_size, 2048))  # the API takes at most 2048 inputs
        self.model_id = model
        self.max_chars = max_chars
        self._api_key = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key or "")
        self._base_url = base_url
        self._dimensions = dimensions
        self.dimension = dimensions or KNOWN_DIMENSIONS.get(model, 0)
        self._timeout = timeout
        self._max_retries = max_retries
        self._socket_path = socket_path
        self._encoding_format = encoding_format
        self._client: JsonEndpoint | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model_id!r}, endpoint={self._endpoint()!r})"

    def _endpoint(self) -> str:
        return f"unix:{self._socket_path}" if self._socket_path is not None else safe_url(self._base_url)

    async def _load(self) -> None:
        base = SOCKET_BASE_URL if self._socket_path is not None else self._base_url or DEFAULT_BASE_URL
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key := self._api_key.get_secret_value():  # none for local servers: send no placeholder
            headers["Authorization"] = f"Bearer {key}"
        self._client = JsonEndpoint(
            base.rstrip("/") + "/embeddings",
            headers=headers,
            timeout=self._timeout,
            max_retries=self._max_retries,
            socket_path=self._socket_path,
        )
        try:
            await self._probe()
        except BaseException:
            await self._unload()
            raise

    async def _probe(self) -> None:
        """One small request: learns the dimension and turns a bad key or model into a start-up error."""
        try:
            # With a known dimension the server can start without the endpoint: do not wait on retries.
            vectors = await self._request([_PROBE_TEXT], max_retries=0 if self.dimension else None)
        except EmbeddingUnavailable as exc:
            if not self.dimension:
                raise
            logger.warning("embedding endpoint not reachable at start-up, continuing: %s", exc.message)
            return
        found = len(vectors[0])
        if self.dimension and found != self.dimension:
            raise ConfigError(
                f"The embedding endpoint returned {found} dimensions for {self.model_id}, expected "
                f"{self.dimension}; fix MSM_EMBEDDING_DIMENSIONS or MSM_EMBEDDING_MODEL."
            )
        self.dimension = found

    async def _unload(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _embed_batch(self, texts: list[str]) -> list[Vector]:
        try:
            vectors = await self._request(texts)
        except ConfigError as exc:
            # Start-up validated the configuration; a key revoked later must not fail writes outright
            # (events are stored without a vector and embedded later), so report it as unavailable.
            raise EmbeddingUnavailable(exc.message) from None
        if len(vectors[0]) != self.dimension:
            raise EmbeddingUnavailable(
                f"The embedding endpoint returned {len(vectors[0])} dimensions for {self.model_id}, "
                f"expected {self.dimension}; fix MSM_EMBEDDING_DIMENSIONS or MSM_EMBEDDING_MODEL."
            )
        return vectors

    def _prepare(self, text: str) -> str:
        # The API rejects empty input; a blank embeds to a neutral vector.
        return super()._prepare(text) or " "

    async def _request(self, texts: list[str], max_retries: int | None = None) -> list[Vector]:
        client = self._client
        if client is None:
            raise RuntimeError("the client is not open")
        body: dict[str, Any] = {"input": texts, "model": self.model_id, "encoding_format": self._encoding_format}
        if self._dimensions:
            body["dimensions"] = self._dimensions
        try:
            urgent = URGENT_HEADERS if self.batch_urgent else None
            data = _embeddings(await client.post(body, max_retries=max_retries, headers=urgent))
        except APIError as exc:
            raise self._translate(exc) from None
        data.sort(key=lambda item: item[0])
        if [index for index, _ in data] != list(range(len(texts))):
            raise EmbeddingUnavailable(f"The embedding endpoint returned {len(data)} vectors for {len(texts)} inputs.")
        rows = [row for _, row in data]
        if len({len(row) for row in rows}) != 1 or not len(rows[0]):
            raise EmbeddingUnavailable("The embedding endpoint returned vectors of inconsistent length.")
        return rows

    def _translate(self, exc: APIError) -> SharedMemoryError:
        """A generic error for callers (agents see it); the detail goes to the server log.

        The endpoint's address, the server's own text and the transport's message are infrastructure: they
        are logged here (credentials masked) and never put in the returned message.
        """
        status = getattr(exc, "status_code", None)
        logger.warning(
            "embedding endpoint %s failed: %s%s: %s",
            self._endpoint(),
            type(exc).__name__,
            f" (HTTP {status})" if status is not None else "",
            self._scrub(exc.detail),
        )
        if isinstance(exc, APITimeoutError):
            return EmbeddingUnavailable("The embedding service is unavailable (timeout); retry later.")
        if isinstance(exc, APIConnectionError):
            return EmbeddingUnavailable("The embedding service is unavailable (connection failed); retry later.")
        if isinstance(exc, APIResponseValidationError):
            return EmbeddingUnavailable(
                "The embedding service returned an invalid answer (not an embeddings response); retry later."
            )
        if isinstance(exc, APIStatusError):
            if status in (401, 403):
                return ConfigError(f"The embedding service rejected the API key (HTTP {status}); check OPENAI_API_KEY.")
            if status == 429:
                return EmbeddingUnavailable("The embedding service is rate limiting (HTTP 429); retry later.")
            if status in (400, 404, 422):
                return ConfigError(
                    f"The embedding service rejected model {self.model_id!r} (HTTP {status}); check "
                    "MSM_EMBEDDING_MODEL, MSM_EMBEDDING_DIMENSIONS and OPENAI_BASE_URL."
                )
            return EmbeddingUnavailable(f"The embedding service failed (HTTP {status}); retry later.")
        return EmbeddingUnavailable(f"The embedding service failed ({type(exc).__name__}); retry later.")

    def _scrub(self, message: str) -> str:
        """For the log: the API key and anything that looks like a credential masked, length capped."""
        key = self._api_key.get_secret_value()
        if key:
            message = message.replace(key, "***")
        return mask_credentials(message)[:500]


_CREDENTIAL = re.compile(
    r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:bearer|basic)?\s*|bearer\s+|api[-_]?key[\"']?\s*[:=]\s*[\"']?)"
    r"[^\s\"',;}]+"
)
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
_KEY_LIKE = re.compile(r"\bsk-[A-Za-z0-9_-]{6,}")


def mask_credentials(text: str) -> str:
    """``text`` with bearer tokens, API keys, ``sk-...`` keys and URL user:password replaced by ``***``."""
    text = _CREDENTIAL.sub(lambda m: m.group(1) + "***", text)
    text = _URL_USERINFO.sub(lambda m: m.group(1) + "***@", text)
    return _KEY_LIKE.sub("sk-***", text)


def _embeddings(payload: object) -> list[tuple[int, Vector]]:
    """``(index, vector)`` for each item of an embeddings answer; ``APIResponseValidationError`` if malformed."""
    try:
        items = payload["data"] if isinstance(payload, dict) else None
        if not isinstance(items, list):
            raise TypeError("no data list")
        data = []
        for item in items:
            index, row = item["index"], _as_floats(item["embedding"])
            if not isinstance(index, int) or isinstance(index, bool):
                raise TypeError("an item without an integer index")
            data.append((index, row))
    except (KeyError, TypeError, ValueError) as exc:  # ValueError: bad base64, or not numbers
        raise APIResponseValidationError(f"not an embeddings answer ({exc!r}): {str(payload)[:300]}") from None
    return data


def _as_floats(embedding: object) -> Vector:
    """A flat list of numbers, or base64 of little-endian float32s (some compatible servers answer base64 even
    when floats were asked for); ``TypeError``/``ValueError`` for anything else."""
    if isinstance(embedding, str):
        return from_float32_bytes(base64.b64decode(embedding, validate=True), byteorder="little")
    if not isinstance(embedding, list) or not all(
        isinstance(x, int | float) and not isinstance(x, bool) for x in embedding
    ):
        raise TypeError("an embedding that is not a flat list of numbers")
    return as_vector(embedding)
