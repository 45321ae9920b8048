"""OpenAIEmbedder against a real local HTTP server that speaks the OpenAI embeddings API."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np
import pytest
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mcp_shared_memory.embeddings import create_embedder
from mcp_shared_memory.embeddings.openai import OpenAIEmbedder
from mcp_shared_memory.errors import ConfigError, EmbeddingUnavailable
from mcp_shared_memory.settings import Settings
from tests.local_http import serve_app

pytestmark = pytest.mark.anyio

API_KEY = "sk-test-4f9a2c7e1b3d5f60"
MODEL_DIMENSIONS = {"text-embedding-3-small": 1536, "acme-embed": 24, "wrong-dims": 7, "ignores-dims": 24}


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


def fake_vector(text: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return v / np.linalg.norm(v)


@dataclass
class FakeOpenAI:
    """Records every request; ``status`` forces an error answer, ``key`` is the accepted API key (None: a local
    server that wants no Authorization header). ``fail_next`` statuses are answered first, one per request,
    with ``retry_after`` as their Retry-After header; ``raw`` replaces a successful answer's body."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    status: int | None = None
    key: str | None = API_KEY
    fail_next: list[int] = field(default_factory=list)
    retry_after: str | None = None
    raw: str | None = None

    async def embeddings(self, request: Request) -> Response:
        body = await request.json()
        headers = request.headers
        self.requests.append(
            {"auth": headers.get("authorization"), "body": body, "priority": headers.get("x-msm-priority")}
        )
        auth = request.headers.get("authorization")
        if auth != (None if self.key is None else f"Bearer {self.key}"):
            # Like the real API, echo the key that was sent: the client must not pass this on.
            sent = (auth or "").removeprefix("Bearer ")
            return error(401, f"Incorrect API key provided: {sent}", "invalid_api_key")
        if self.fail_next:
            status = self.fail_next.pop(0)
            answer = error(status, f"forced {status}", "forced")
            if self.retry_after is not None:
                answer.headers["Retry-After"] = self.retry_after
            return answer
        if self.status is not None:
            return error(self.status, f"forced {self.status}", "forced")
        if self.raw is not None:
            return Response(self.raw, media_type="application/json")
        model = body["model"]
        if model not in MODEL_DIMENSIONS:
            return error(404, f"The model `{model}` does not exist", "model_not_found")
        inputs = body["input"]
        if isinstance(inputs, str):
            inputs = [inputs]
        if any(not text for text in inputs):
            return error(400, "'$.input' is invalid: empty string", "invalid_request")
        dim = body.get("dimensions") or MODEL_DIMENSIONS[model]
        if model == "ignores-dims":
            dim = MODEL_DIMENSIONS[model]
        encode = base64_floats if body.get("encoding_format") == "base64" else list_floats
        data = [
            {"object": "embedding", "index": i, "embedding": encode(fake_vector(text, dim))}
            for i, text in enumerate(inputs)
        ]
        data.reverse()  # the client must order by index, not by position
        if model == "wrong-dims" and len(data) > 1:
            data[0]["embedding"] = data[0]["embedding"][:3]
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
            }
        )


def list_floats(v: np.ndarray) -> list[float]:
    return [float(x) for x in v]


def base64_floats(v: np.ndarray) -> str:
    return base64.b64encode(v.astype("<f4").tobytes()).decode()


def error(status: int, message: str, code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}},
        status_code=status,
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    fake: FakeOpenAI
    base_url: str


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    fake = FakeOpenAI()
    app = Starlette(routes=[Route("/v1/embeddings", fake.embeddings, methods=["POST"])])
    with serve_app(app) as base:
        yield Server(fake, f"{base}/v1")


@pytest.fixture
def fake(server: Server) -> FakeOpenAI:
    server.fake.requests.clear()
    server.fake.status = None
    server.fake.key = API_KEY
    server.fake.fail_next.clear()
    server.fake.retry_after = None
    server.fake.raw = None
    return server.fake


def make(server: Server, **kwargs: Any) -> OpenAIEmbedder:
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("base_url", server.base_url)
    return OpenAIEmbedder(**kwargs)


async def test_open_probes_once_then_embeds(server: Server, fake: FakeOpenAI) -> None:
    async with make(server) as e:
        assert e.dimension == 1536 and e.model_id == "text-embedding-3-small"
        assert len(fake.requests) == 1 and len(fake.requests[0]["body"]["input"]) == 1
        fake.requests.clear()
        v = await e.embed("hello world")
    assert len(v) == 1536 and v.typecode == "f"
    np.testing.assert_allclose(v, fake_vector("hello world", 1536), atol=1e-6)
    assert fake.requests[0]["auth"] == f"Bearer {API_KEY}"
    assert fake.requests[0]["body"]["input"] == ["hello world"]
    assert fake.requests[0]["body"]["encoding_format"] == "float"


async def test_an_urgent_batch_is_marked_for_the_endpoint(server: Server, fake: FakeOpenAI) -> None:
    async with make(server) as e:
        fake.requests.clear()
        await e.embed("a search's question", urgent=True)
        await e.embed("a background text")
    assert [r["priority"] for r in fake.requests] == ["urgent", None]


async def test_concurrent_embeds_arrive_as_one_request_ordered_by_index(server: Server, fake: FakeOpenAI) -> None:
    texts = [f"memory {i}" for i in range(10)]
    async with make(server) as e:
        fake.requests.clear()
        vectors = await asyncio.gather(*(e.embed(t) for t in texts))
    assert len(fake.requests) == 1
    assert fake.requests[0]["body"]["input"] == texts
    for text, v in zip(texts, vectors, strict=True):
        np.testing.assert_allclose(v, fake_vector(text, 1536), atol=1e-6)


async def test_batches_respect_batch_size(server: Server, fake: FakeOpenAI) -> None:
    texts = [f"note {i}" for i in range(70)]
    async with make(server, batch_size=32) as e:
        fake.requests.clear()
        vectors = await e.embed_many(texts)
    sizes = [len(r["body"]["input"]) for r in fake.requests]
    assert sum(sizes) == 70 and max(sizes) <= 32 and len(sizes) <= 4
    for text, v in zip(texts, vectors, strict=True):
        np.testing.assert_allclose(v, fake_vector(text, 1536), atol=1e-6)


async def test_unknown_model_dimension_is_probed_at_open(server: Server, fake: FakeOpenAI) -> None:
    e = make(server, model="acme-embed")
    assert e.dimension == 0
    async with e:
        assert e.dimension == 24
        assert len(fake.requests) == 1
        assert len(await e.embed("x")) == 24


async def test_configured_dimensions_are_requested(server: Server, fake: FakeOpenAI) -> None:
    async with make(server, dimensions=256) as e:
        assert e.dimension == 256
        v = await e.embed("shorter vectors")
    assert len(v) == 256
    assert all(r["body"]["dimensions"] == 256 for r in fake.requests)


async def test_wrong_key_fails_open_without_revealing_the_key(server: Server, fake: FakeOpenAI) -> None:
    wrong = "sk-wrong-9d8c7b6a5f4e3d2c"
    e = make(server, api_key=SecretStr(wrong))
    with pytest.raises(ConfigError) as info:
        await e.open()
    message = str(info.value)
    assert "401" in message and "OPENAI_API_KEY" in message
    assert wrong not in message and "9d8c7b6a" not in message
    assert len(fake.requests) == 1  # 401 is not retried
    assert not e.is_open
    assert wrong not in repr(e)


async def test_key_revoked_at_run_time_is_unavailable(server: Server, fake: FakeOpenAI) -> None:
    async with make(server) as e:
        fake.key = "sk-rotated"
        with pytest.raises(EmbeddingUnavailable) as info:
            await e.embed("hello")
        assert "OPENAI_API_KEY" in str(info.value) and API_KEY not in str(info.value)
        fake.key = API_KEY
        assert len(await e.embed("hello")) == 1536


async def test_unknown_model_is_a_config_error_at_open(server: Server, fake: FakeOpenAI) -> None:
    with pytest.raises(ConfigError, match=r"no-such-model.*404"):
        await make(server, model="no-such-model", dimensions=8).open()


async def test_server_errors_and_rate_limits_are_unavailable(server: Server, fake: FakeOpenAI) -> None:
    async with make(server, max_retries=0) as e:
        fake.status = 500
        with pytest.raises(EmbeddingUnavailable, match="HTTP 500"):
            await e.embed("x")
        fake.status = 429
        with pytest.raises(EmbeddingUnavailable, match="rate limit"):
            await e.embed("x")
        fake.status = None
        assert len(await e.embed("x")) == 1536  # the worker recovered


async def test_dimension_mismatches(server: Server, fake: FakeOpenAI) -> None:
    # a server that ignores `dimensions`: caught at start-up
    with pytest.raises(ConfigError, match=r"returned 24 dimensions.*MSM_EMBEDDING_DIMENSIONS"):
        await make(server, model="ignores-dims", dimensions=12).open()
    # vectors of different lengths in one answer: the batch is refused, then each text is asked alone
    async with make(server, model="wrong-dims") as e:
        vectors = await e.embed_many(["a", "b"])
    assert [len(v) for v in vectors] == [7, 7]


async def test_empty_and_long_texts_are_sent_safely(server: Server, fake: FakeOpenAI) -> None:
    async with make(server) as e:
        fake.requests.clear()
        empty, long = await e.embed_many(["", "x" * 50_000])
    assert len(empty) == len(long) == 1536
    sent = fake.requests[0]["body"]["input"]
    assert sent[0] == " " and len(sent[1]) == 8000


async def test_server_down_is_unavailable_quickly_and_hides_credentials() -> None:
    base_url = f"http://user:pa55word@127.0.0.1:{free_port()}/v1"
    start = time.monotonic()
    async with OpenAIEmbedder(api_key=API_KEY, base_url=base_url) as e:
        # known dimension: the server starts without its endpoint
        assert time.monotonic() - start < 2
        start = time.monotonic()
        with pytest.raises(EmbeddingUnavailable) as info:
            await e.embed("hello")
        elapsed = time.monotonic() - start
    assert elapsed < 5, elapsed
    message = str(info.value)
    assert "127.0.0.1" not in message and "retry later" in message  # the address is in the log only
    assert "pa55word" not in message and "user:" not in message and API_KEY not in message


async def test_server_down_fails_open_when_the_dimension_is_unknown() -> None:
    e = OpenAIEmbedder(model="acme-embed", api_key=API_KEY, base_url=f"http://127.0.0.1:{free_port()}/v1")
    start = time.monotonic()
    with pytest.raises(EmbeddingUnavailable, match="unavailable"):
        await e.open()
    assert time.monotonic() - start < 5
    assert not e.is_open


async def test_factory_builds_the_openai_embedder(server: Server, fake: FakeOpenAI) -> None:
    settings = Settings(
        embedding_provider="openai",
        openai_api_key=SecretStr(API_KEY),
        openai_base_url=server.base_url,
        embedding_model="acme-embed",
        embedding_batch_size=4,
    )
    e = create_embedder(settings)
    assert isinstance(e, OpenAIEmbedder) and e.batch_size == 4
    async with e:
        assert e.dimension == 24
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        create_embedder(Settings(embedding_provider="openai", openai_api_key=None, openai_base_url=None))


async def test_server_errors_are_retried_then_succeed(server: Server, fake: FakeOpenAI) -> None:
    async with make(server, max_retries=2) as e:
        fake.requests.clear()
        fake.fail_next = [503, 503]
        with anyio.fail_after(10):  # backoff ~0.5 s then ~1 s
            v = await e.embed("third time lucky")
    assert len(fake.requests) == 3
    np.testing.assert_allclose(v, fake_vector("third time lucky", 1536), atol=1e-6)


async def test_retries_are_bounded_and_client_errors_not_retried(server: Server, fake: FakeOpenAI) -> None:
    fake.retry_after = "0"
    async with make(server, max_retries=1) as e:
        fake.requests.clear()
        fake.fail_next = [502, 502]
        with pytest.raises(EmbeddingUnavailable, match=r"HTTP 502.*retry later"):
            await e.embed("x")
        assert len(fake.requests) == 2  # one attempt and one retry
        fake.requests.clear()
        fake.fail_next = [422]
        with pytest.raises(EmbeddingUnavailable, match="MSM_EMBEDDING_MODEL"):
            await e.embed("y")
        assert len(fake.requests) == 1


async def test_retry_after_zero_is_honoured(server: Server, fake: FakeOpenAI) -> None:
    async with make(server, max_retries=3) as e:
        fake.requests.clear()
        fake.fail_next = [429, 429, 429]
        fake.retry_after = "0"
        with anyio.fail_after(1):  # the backoff alone would take over 2.5 s
            v = await e.embed("patience")
    assert len(fake.requests) == 4 and len(v) == 1536


@pytest.mark.parametrize(
    "raw",
    [
        "<html><body>502 Bad Gateway from internal-proxy-7</body></html>",
        '{"object": "list", "model": "internal-proxy-7"}',
        '{"data": [{"index": 0}]}',
        '{"data": [{"index": "0", "embedding": [1.0, 2.0]}]}',
        '{"data": [{"index": 0, "embedding": "not base64 internal-proxy-7"}]}',
        '["internal-proxy-7"]',
    ],
)
async def test_malformed_answers_are_unavailable(server: Server, fake: FakeOpenAI, raw: str) -> None:
    async with make(server) as e:
        fake.requests.clear()
        fake.raw = raw
        with pytest.raises(EmbeddingUnavailable, match="invalid answer") as info:
            await e.embed("hello")
        assert "internal-proxy-7" not in str(info.value)
        assert len(fake.requests) == 1  # not retried
        fake.raw = None
        assert len(await e.embed("hello again")) == 1536  # the worker keeps working


async def test_no_api_key_sends_no_authorization_header(server: Server, fake: FakeOpenAI) -> None:
    fake.key = None
    async with make(server, api_key=None, model="acme-embed") as e:
        v = await e.embed("local server")
    assert len(v) == 24
    assert len(fake.requests) == 2 and all(r["auth"] is None for r in fake.requests)
    # and a server that wants a key says so
    fake.key = API_KEY
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        await make(server, api_key=None, model="acme-embed").open()


async def test_base64_vectors_are_decoded(server: Server, fake: FakeOpenAI) -> None:
    async with make(server, encoding_format="base64") as e:
        vectors = await e.embed_many(["packed", "floats"])
    assert fake.requests[-1]["body"]["encoding_format"] == "base64"
    for text, v in zip(["packed", "floats"], vectors, strict=True):
        np.testing.assert_allclose(v, fake_vector(text, 1536), atol=1e-6)
