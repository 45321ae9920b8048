"""The embedding service's HTTP API, spoken to over its unix socket: the OpenAI-compatible answer, and a
clear 400 for bad input that leaves the service serving."""

from __future__ import annotations

import base64
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
import numpy as np
import pytest

from mcp_shared_memory.embedded import remove_data_dir
from mcp_shared_memory.embedded.embedding_service import EmbeddedEmbeddingService

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
async def service() -> AsyncIterator[EmbeddedEmbeddingService]:
    data_dir = Path(tempfile.mkdtemp(prefix="msm-svc-http-", dir="/tmp"))
    running = EmbeddedEmbeddingService(data_dir, batch_size=8)
    await anyio.to_thread.run_sync(running.start)
    yield running
    await anyio.to_thread.run_sync(running.release)
    remove_data_dir(data_dir)


@pytest.fixture
async def client(service: EmbeddedEmbeddingService) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(uds=str(service.socket_path))
    async with httpx.AsyncClient(transport=transport, base_url="http://embedding-service") as opened:
        yield opened


async def embed(client: httpx.AsyncClient, body: Any = None, *, content: bytes | None = None) -> httpx.Response:
    return await client.post("/v1/embeddings", json=body, content=content)


async def test_a_list_of_strings_gets_one_normalised_vector_each_in_order(client: httpx.AsyncClient) -> None:
    response = await embed(client, {"input": ["alpha", "beta", "alpha"], "model": "all-MiniLM-L6-v2"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "all-MiniLM-L6-v2" and body["object"] == "list"
    assert [item["index"] for item in body["data"]] == [0, 1, 2]
    vectors = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    assert vectors.shape == (3, 384)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-4)
    assert np.allclose(vectors[0], vectors[2]) and not np.allclose(vectors[0], vectors[1])


async def test_a_single_string_and_base64_encoding(client: httpx.AsyncClient) -> None:
    floats = (await embed(client, {"input": "gamma"})).json()["data"][0]["embedding"]
    packed = (await embed(client, {"input": "gamma", "encoding_format": "base64"})).json()["data"][0]["embedding"]
    assert np.allclose(np.frombuffer(base64.b64decode(packed), dtype="<f4"), floats)


@pytest.mark.parametrize(
    ("body", "content", "message"),
    [
        ({"input": []}, None, "'input' is an empty list"),
        ({"input": ""}, None, "input[0] is an empty string"),
        ({"input": ["ok", "x" * 16_001]}, None, "input[1] has 16001 characters; at most 16000"),
        ({"input": [[101, 2023]]}, None, "input[0] is list, not a string"),
        ({"input": ["ok", 7]}, None, "input[1] is int, not a string"),
        ({"input": None}, None, "'input' must be a string or a list of strings"),
        ({"text": "hello"}, None, "'input' is required"),
        (["hello"], None, "must be a JSON object"),
        (None, b'{"input": ["unterminated"', "not valid JSON"),
        (None, b"\xff\xfe", "not valid JSON"),
        ({"input": "hello", "model": "text-embedding-3-small"}, None, "serves 'all-MiniLM-L6-v2'"),
        ({"input": "hello", "encoding_format": "int8"}, None, "'encoding_format' must be"),
        ({"input": "hello", "dimensions": 1536}, None, "384 dimensions only"),
        ({"input": ["a"] * 2049}, None, "at most 2048 per request"),
    ],
)
async def test_bad_input_gets_a_clear_400_and_the_service_keeps_serving(
    client: httpx.AsyncClient, body: Any, content: bytes | None, message: str
) -> None:
    response = await embed(client, body, content=content)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"
    assert "Traceback" not in response.text and "/" not in error["message"].replace("p95", "")
    assert (await embed(client, {"input": "still serving"})).status_code == 200


async def test_an_oversized_body_is_refused(client: httpx.AsyncClient) -> None:
    response = await embed(client, content=b'{"input": "' + b"x" * (17 * 1024 * 1024) + b'"}')
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]["message"]


async def test_unknown_routes_name_the_one_to_use(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/v1/embeddings"), await client.post("/v1/chat/completions", json={})):
        assert response.status_code == 404
        assert "POST /v1/embeddings" in response.json()["error"]["message"]


async def test_status_counts_requests_rejections_and_batches(
    client: httpx.AsyncClient, service: EmbeddedEmbeddingService
) -> None:
    before = service.status()
    await embed(client, {"input": []})
    await embed(client, {"input": [f"text {i}" for i in range(20)]})
    after = service.status()
    assert after["running"] and after["pid"] == before["pid"]
    assert after["rejected"] == before["rejected"] + 1
    assert after["requests"] == before["requests"] + 1
    assert after["texts"] == before["texts"] + 20
    assert after["largest_batch"] == 8  # the service's batch size
    assert after["holders"] and after["batch_size"] == 8 and after["socket"] == str(service.socket_path)


async def test_an_urgent_request_is_embedded_ahead_of_the_backlog(client: httpx.AsyncClient) -> None:
    """A search's question (``X-MSM-Priority: urgent``) waits for the batch the model is running, not for
    every text queued before it by other processes' embedding backlogs."""
    finished: list[str] = []

    async def request(name: str, texts: list[str], headers: dict[str, str]) -> None:
        body = {"input": texts, "model": "all-MiniLM-L6-v2"}
        response = await client.post("/v1/embeddings", json=body, headers=headers)
        assert response.status_code == 200
        finished.append(name)

    backlog = [[f"backlog note {i}.{j} about the payments deploy" for j in range(8)] for i in range(30)]
    async with anyio.create_task_group() as tasks:
        for i, texts in enumerate(backlog):
            tasks.start_soon(request, f"backlog {i}", texts, {})
        with anyio.fail_after(60):
            while not finished:  # noqa: ASYNC110 - the service's progress, seen from outside
                await anyio.sleep(0.005)
        tasks.start_soon(request, "question", ["what broke the payments deploy?"], {"X-MSM-Priority": "urgent"})
    backlog_after_question = len(finished) - 1 - finished.index("question")
    assert backlog_after_question >= 10, finished
