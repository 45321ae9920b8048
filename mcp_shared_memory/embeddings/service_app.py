"""The embedding service's HTTP side: the OpenAI-compatible ``POST /v1/embeddings`` over a unix socket.

Every request's texts go into one ``OnnxEmbedder``, whose worker coalesces the texts of all concurrent
requests (from every client process) into model batches of up to ``batch_size``, waiting ``batch_wait``
for more. Bad input is answered with a 400 in OpenAI's error shape and never reaches the model.

    POST /v1/embeddings   {"input": str | [str, ...], "model"?: str, "encoding_format"?: "float" | "base64"}
    GET  /v1/models       the one model served
    GET  /health          200 once the model is loaded (the socket only exists from then on)
    GET  /status          pid, model, settings, requests served and batch statistics
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import SharedMemoryError
from ..vectors import Vector, to_float32_bytes
from .base import PRIORITY_HEADER, URGENT
from .local import OnnxEmbedder

logger = logging.getLogger(__name__)

MAX_INPUTS = 2048  # per request, as OpenAI's API
MAX_BODY_BYTES = 16 * 1024 * 1024
# Model names a request may give: ours, and its name on the Hugging Face hub.
ALIASES = ("sentence-transformers/all-MiniLM-L6-v2",)


class BadRequest(Exception):
    def __init__(self, message: str, *, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.param = message, status, param


@dataclass
class ServiceCounters:
    started: float = field(default_factory=time.time)
    requests: int = 0  # answered with vectors
    rejected: int = 0  # answered with a 4xx
    failed: int = 0  # the model failed (5xx)


@dataclass(frozen=True)
class ServiceConfig:
    threads: int
    batch_size: int
    batch_wait: float


def parse_request(body: bytes, *, model_id: str, max_chars: int) -> tuple[list[str], str]:
    """The texts and encoding format of a ``/v1/embeddings`` body, or ``BadRequest`` naming the problem."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise BadRequest("The request body must be a JSON object with an 'input' field.")
    if "input" not in payload:
        raise BadRequest("'input' is required: a string or a list of strings.", param="input")
    raw = payload["input"]
    if isinstance(raw, str):
        texts: list[Any] = [raw]
    elif isinstance(raw, list):
        texts = raw
    else:
        raise BadRequest("'input' must be a string or a list of strings.", param="input")
    if not texts:
        raise BadRequest("'input' is an empty list; send at least one string.", param="input")
    if len(texts) > MAX_INPUTS:
        raise BadRequest(f"'input' has {len(texts)} items; at most {MAX_INPUTS} per request.", param="input")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise BadRequest(
                f"input[{i}] is {type(text).__name__}, not a string (token arrays are not supported).", param="input"
            )
        if not text:
            raise BadRequest(f"input[{i}] is an empty string.", param="input")
        if len(text) > max_chars:
            raise BadRequest(f"input[{i}] has {len(text)} characters; at most {max_chars}.", param="input")
    model = payload.get("model")
    if model is not None and model not in (model_id, *ALIASES):
        raise BadRequest(f"This service serves {model_id!r}, not {str(model)[:100]!r}.", param="model")
    encoding = payload.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    dimensions = payload.get("dimensions")
    if dimensions is not None and dimensions != OnnxEmbedder.dimension:
        raise BadRequest(f"{model_id} has {OnnxEmbedder.dimension} dimensions only.", param="dimensions")
    return texts, encoding


def error_response(message: str, *, status: int, param: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


async def read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadRequest(f"The request body is larger than {MAX_BODY_BYTES} bytes.", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadRequest(f"The request body is larger than {MAX_BODY_BYTES} bytes.", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(embedder: OnnxEmbedder, config: ServiceConfig) -> Starlette:
    counters = ServiceCounters()

    async def embeddings(request: Request) -> Response:
        try:
            texts, encoding = parse_request(
                await read_body(request), model_id=embedder.model_id, max_chars=embedder.max_chars
            )
        except BadRequest as exc:
            counters.rejected += 1
            return error_response(exc.message, status=exc.status, param=exc.param)
        try:
            vectors = await embedder.embed_many(texts, urgent=request.headers.get(PRIORITY_HEADER) == URGENT)
        except SharedMemoryError as exc:
            counters.failed += 1
            return error_response(exc.message, status=503)
        except Exception:
            counters.failed += 1
            logger.exception("embedding %d texts failed", len(texts))
            return error_response("The embedding model failed; see the service log.", status=500)
        counters.requests += 1
        data = [
            {"object": "embedding", "index": i, "embedding": _encode(vector, encoding)}
            for i, vector in enumerate(vectors)
        ]
        usage = {"prompt_tokens": 0, "total_tokens": 0}
        return JSONResponse({"object": "list", "data": data, "model": embedder.model_id, "usage": usage})

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": embedder.model_id, "object": "model"}]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def status(request: Request) -> Response:
        stats = embedder.stats
        return JSONResponse(
            {
                "pid": os.getpid(),
                "model": embedder.model_id,
                "dimension": embedder.dimension,
                "threads": config.threads,
                "batch_size": config.batch_size,
                "batch_wait_ms": round(config.batch_wait * 1000, 3),
                "started_at": counters.started,
                "uptime_s": round(time.time() - counters.started, 3),
                "requests": counters.requests,
                "rejected": counters.rejected,
                "failed": counters.failed,
                "texts": stats.texts,
                "batches": stats.batches,
                "mean_batch": round(stats.mean, 2),
                "largest_batch": stats.largest,
            }
        )

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(f"No route {request.method} {request.url.path}; use POST /v1/embeddings.", status=404)

    async def server_error(request: Request, exc: Exception) -> Response:
        return error_response("Internal error of the embedding service; see its log.", status=500)

    routes = [
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", embeddings, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/status", status, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, 500: server_error})


def _encode(vector: Vector, encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(to_float32_bytes(vector, byteorder="little")).decode("ascii")
    return vector.tolist()


def bind_unix(path: str) -> socket.socket:
    """A listening unix socket at ``path`` (mode 0600), replacing a stale socket file left by a dead service."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old_umask = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old_umask)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    # uvicorn's own handlers re-raise the signal once it has served, killing the process before the
    # caller's clean-up (socket and pid file) runs; ``serve`` handles the signals instead.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(
    sock: socket.socket,
    app: Starlette,
    *,
    should_exit: Callable[[], bool],
    check_every: float = 1.0,
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT or until ``should_exit()`` (run in a thread) says so."""
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        # Clients keep their connection between embeds; closing it under them costs a reconnect.
        timeout_keep_alive=300,
        timeout_graceful_shutdown=2,
    )
    server = _Server(config)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, setattr, server, "should_exit", True)

    async def watch() -> None:
        while not server.should_exit:
            await asyncio.sleep(check_every)
            if await asyncio.to_thread(should_exit):
                logger.info("no holder left: stopping")
                server.should_exit = True

    watcher = asyncio.create_task(watch())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        await asyncio.wait({watcher})
