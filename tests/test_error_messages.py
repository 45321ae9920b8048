"""Errors an agent can see are generic where the detail is infrastructure; the server log keeps the detail."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from mcp_shared_memory.embeddings.local import verify_file
from mcp_shared_memory.embeddings.openai import OpenAIEmbedder, mask_credentials
from mcp_shared_memory.errors import ConfigError, EmbeddingUnavailable
from mcp_shared_memory.stores.qdrant_points import unavailable
from tests.local_http import serve_app

API_KEY = "sk-test-7e1b3d5f604f9a2c"
INTERNAL = "internal-host-7.corp:9000"


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING)
    return caplog


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def embeddings(request: Request) -> Response:
    body = await request.json()
    if request.headers.get("authorization") != f"Bearer {API_KEY}":
        # Like the real API: the key that was sent is echoed back.
        sent = request.headers.get("authorization", "")
        return JSONResponse({"error": {"message": f"Incorrect API key provided: {sent}"}}, status_code=401)
    if body["model"] == "bad-model":
        return JSONResponse(
            {"error": {"message": f"model 'bad-model' not served by {INTERNAL} (/srv/models)", "code": "x"}},
            status_code=400,
        )
    return PlainTextResponse(f"upstream {INTERNAL} crashed: Traceback ... /opt/tei/server.py", status_code=500)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    app = Starlette(routes=[Route("/v1/embeddings", embeddings, methods=["POST"])])
    with serve_app(app) as base:
        yield f"{base}/v1"


def port_of(url: str) -> str:
    port = httpx.URL(url).port
    assert port is not None
    return str(port)


# OpenAI-compatible endpoint ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_endpoint_down_names_neither_host_nor_port(log: pytest.LogCaptureFixture) -> None:
    port = str(free_port())
    base_url = f"http://user:pa55word@127.0.0.1:{port}/v1"
    async with OpenAIEmbedder(api_key=API_KEY, base_url=base_url, max_retries=0) as e:
        with pytest.raises(EmbeddingUnavailable) as info:
            await e.embed("hello")
    message = info.value.message
    assert "127.0.0.1" not in message and port not in message
    assert "unavailable" in message and "retry later" in message
    assert "APIConnectionError" in log.text and f"127.0.0.1:{port}" in log.text
    assert API_KEY not in log.text and "pa55word" not in log.text


@pytest.mark.anyio
async def test_server_error_hides_the_body_and_logs_the_status(endpoint: str, log: pytest.LogCaptureFixture) -> None:
    async with OpenAIEmbedder(api_key=API_KEY, base_url=endpoint, max_retries=0) as e:
        log.clear()
        with pytest.raises(EmbeddingUnavailable) as info:
            await e.embed("hello")
    message = info.value.message
    assert INTERNAL not in message and "internal-host" not in message and "9000" not in message
    assert "/opt/tei" not in message and "127.0.0.1" not in message and port_of(endpoint) not in message
    assert "HTTP 500" in message and "retry later" in message
    assert "HTTP 500" in log.text and INTERNAL in log.text
    assert API_KEY not in log.text


@pytest.mark.anyio
async def test_bad_model_is_a_config_error_without_the_server_text(
    endpoint: str, log: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ConfigError) as info:
        await OpenAIEmbedder(model="bad-model", api_key=API_KEY, base_url=endpoint, dimensions=8).open()
    message = info.value.message
    assert INTERNAL not in message and "/srv/models" not in message and "not served" not in message
    assert "127.0.0.1" not in message and port_of(endpoint) not in message
    assert "HTTP 400" in message and "MSM_EMBEDDING_MODEL" in message
    assert "HTTP 400" in log.text and INTERNAL in log.text


@pytest.mark.anyio
async def test_rejected_key_is_masked_in_the_log_too(endpoint: str, log: pytest.LogCaptureFixture) -> None:
    wrong = "sk-wrong-5f4e3d2c9d8c7b6a"
    with pytest.raises(ConfigError) as info:
        await OpenAIEmbedder(api_key=wrong, base_url=endpoint).open()
    message = info.value.message
    assert "OPENAI_API_KEY" in message and "HTTP 401" in message
    assert "127.0.0.1" not in message and port_of(endpoint) not in message
    assert "HTTP 401" in log.text
    assert wrong not in log.text and "5f4e3d2c" not in log.text


def test_mask_credentials() -> None:
    text = (
        "Authorization: Bearer abc.def.ghi; api_key=s3cr3t-value; {'api-key': 'qd-123456'}; "
        "http://user:pa55@host:1/v1; key sk-proj-ABCDEF123456"
    )
    masked = mask_credentials(text)
    for secret in ("abc.def.ghi", "s3cr3t-value", "qd-123456", "pa55", "ABCDEF123456"):
        assert secret not in masked
    assert "host:1" in masked  # addresses stay: the log is the operator's


def test_missing_local_model_file_names_no_path(tmp_path: Path, log: pytest.LogCaptureFixture) -> None:
    missing = tmp_path / "secret-dir" / "model.onnx"
    with pytest.raises(ConfigError) as info:
        verify_file(missing, "0" * 64, "embedding model")
    assert str(tmp_path) not in info.value.message and "secret-dir" not in info.value.message
    assert "reinstall" in info.value.message
    assert str(missing) in log.text


# Qdrant -------------------------------------------------------------------------------------------------


def qdrant_response(status: int, reason: str, error: str) -> UnexpectedResponse:
    content = f'{{"status": {{"error": "{error}"}}, "time": 0.001}}'.encode()
    return UnexpectedResponse(status_code=status, reason_phrase=reason, content=content, headers=httpx.Headers())


def test_qdrant_error_text_stays_in_the_log(log: pytest.LogCaptureFixture) -> None:
    text = "Collection msm_x not found at /qdrant/storage/collections/msm_x"
    failure = unavailable("search facts", qdrant_response(404, "Not Found", text))
    message = failure.message
    assert "/qdrant/storage" not in message and "msm_x" not in message and "not found" not in message.lower()
    assert message == "Qdrant is unavailable (HTTP 404) and could not search facts; retry later"
    assert text in log.text and "404" in log.text and "Not Found" in log.text


def test_qdrant_refused_key_names_the_setting_only(log: pytest.LogCaptureFixture) -> None:
    failure = unavailable("store a fact", qdrant_response(403, "Forbidden", "api-key: qd-abc123 is invalid"))
    assert "MSM_QDRANT_API_KEY" in failure.message
    assert "Forbidden" not in failure.message and "qd-abc123" not in failure.message
    assert "403" in log.text and "qd-abc123" not in log.text


def test_qdrant_transport_error_names_no_address(log: pytest.LogCaptureFixture) -> None:
    source = httpx.ConnectError("connection refused to http://admin:pw@qdrant.internal:6333/collections")
    failure = unavailable("search facts", ResponseHandlingException(source))
    assert "qdrant.internal" not in failure.message and "6333" not in failure.message
    assert failure.message == "Qdrant is unavailable (ConnectError) and could not search facts; retry later"
    assert "qdrant.internal:6333" in log.text and ":pw@" not in log.text
