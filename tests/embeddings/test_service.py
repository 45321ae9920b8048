"""The machine's embedding service with real processes: shared by clients, stopped by the last holder,
one service from racing first starts, SIGKILL of holders and of the service, the fallback, bad input."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import psutil
import pytest

from mcp_shared_memory.embedded import remove_data_dir
from mcp_shared_memory.embedded.embedding_service import EmbeddedEmbeddingService, service_status
from mcp_shared_memory.embeddings import create_embedder
from mcp_shared_memory.embeddings.local import OnnxEmbedder
from mcp_shared_memory.embeddings.local_service import LocalServiceEmbedder
from mcp_shared_memory.settings import Settings

CHILD = Path(__file__).with_name("service_child.py")
REPO = Path(__file__).resolve().parents[2]
TEXTS = ["The auth service uses OAuth2 PKCE", "payments-api p95 back under 200 ms", "ERR_4417 on checkout", "x"]

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="msm-svc-", dir="/tmp"))
    yield path
    service = EmbeddedEmbeddingService(path)
    status = service.status()
    if status.get("pid"):  # a failed test must not leave a service behind
        os.kill(status["pid"], signal.SIGKILL)
    remove_data_dir(path)


class Child:
    """A client process (tests/embeddings/service_child.py) answering one JSON line per command."""

    def __init__(self, data_dir: Path) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO, env=env, text=True,
        )  # fmt: skip
        self.pid = self.proc.pid

    async def read(self) -> Any:
        assert self.proc.stdout is not None
        line = await anyio.to_thread.run_sync(self.proc.stdout.readline, abandon_on_cancel=True)
        assert line, f"child {self.pid} exited ({self.proc.poll()})"
        return json.loads(line)

    async def ask(self, command: str) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return await self.read()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    async def exit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await anyio.to_thread.run_sync(self.proc.wait)


@pytest.fixture
async def children() -> AsyncIterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


async def spawn(children: list[Child], data_dir: Path, n: int = 1) -> list[Child]:
    new = [Child(data_dir) for _ in range(n)]
    children.extend(new)
    for child in new:
        assert await child.read() == "loaded"
    return new


async def wait_for(condition: Any, seconds: float = 20) -> None:
    """Poll a condition of other processes (nothing in this one can signal it) under ``fail_after``."""
    with anyio.fail_after(seconds):
        done = condition()
        while not done:
            await anyio.sleep(0.02)
            done = condition()


def service_pids(data_dir: Path) -> list[int]:
    """Live service processes of this data dir (found by their command line, not by the pid file)."""
    marker = str(EmbeddedEmbeddingService(data_dir).dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] != psutil.STATUS_ZOMBIE and "--dir" in cmdline and marker in cmdline:
            found.append(proc.pid)
    return found


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


async def test_two_processes_share_one_service_and_the_last_holder_stops_it(
    data_dir: Path, children: list[Child]
) -> None:
    a, b = await spawn(children, data_dir, 2)
    for child in (a, b):
        assert await child.ask("open") == "LocalServiceEmbedder"
        assert not (await child.ask(f"embed {TEXTS[0]}"))["in_process"]
    status = service_status(data_dir)
    assert status["running"] and status["model"] == "all-MiniLM-L6-v2"
    assert status["holders"] == sorted([a.pid, b.pid])
    assert status["requests"] >= 2 and status["batches"] >= 1
    assert service_pids(data_dir) == [status["pid"]]

    assert await a.ask("close") == "closed"
    assert service_status(data_dir)["pid"] == status["pid"]  # b still holds it
    assert await b.ask("close") == "closed"
    assert service_pids(data_dir) == []
    assert not service_status(data_dir)["running"]
    assert not EmbeddedEmbeddingService(data_dir).socket_path.exists()


async def test_simultaneous_first_starts_produce_one_service(data_dir: Path, children: list[Child]) -> None:
    racers = await spawn(children, data_dir, 8)
    for child in racers:  # every child is loaded: the commands go out together
        assert child.proc.stdin is not None
        child.proc.stdin.write("start\n")
        child.proc.stdin.flush()
    pids = {await child.read() for child in racers}
    assert len(pids) == 1 and None not in pids
    assert service_pids(data_dir) == list(pids)
    assert service_status(data_dir)["holders"] == sorted(c.pid for c in racers)
    for child in racers:
        await child.exit()
    await wait_for(lambda: service_pids(data_dir) == [])


async def test_sigkill_of_the_starting_holder_leaves_the_service_to_the_others(
    data_dir: Path, children: list[Child]
) -> None:
    starter, other = await spawn(children, data_dir, 2)
    await starter.ask("open")
    await starter.ask("embed warm")
    await other.ask("open")
    pid = service_status(data_dir)["pid"]
    starter.kill()
    assert not (await other.ask(f"embed {TEXTS[1]}"))["in_process"]
    assert service_status(data_dir)["pid"] == pid
    assert service_status(data_dir)["holders"] == [other.pid]
    await other.ask("close")
    await wait_for(lambda: service_pids(data_dir) == [])


async def test_a_sigkilled_last_holder_does_not_leave_the_service_running(
    data_dir: Path, children: list[Child]
) -> None:
    (only,) = await spawn(children, data_dir)
    await only.ask("open")
    await only.ask("embed warm")
    assert len(service_pids(data_dir)) == 1
    only.kill()
    await wait_for(lambda: service_pids(data_dir) == [])  # the service sees no holder and exits
    assert not EmbeddedEmbeddingService(data_dir).socket_path.exists()
    (next_one,) = await spawn(children, data_dir)  # and the next process starts a fresh one
    await next_one.ask("open")
    assert not (await next_one.ask("embed again"))["in_process"]


async def test_a_sigkilled_service_is_restarted_by_the_next_embed(data_dir: Path, children: list[Child]) -> None:
    a, b = await spawn(children, data_dir, 2)
    for child in (a, b):
        await child.ask("open")
        await child.ask("embed warm")
    old = service_status(data_dir)["pid"]
    os.kill(old, signal.SIGKILL)
    await wait_for(lambda: old not in service_pids(data_dir))
    first = await a.ask(f"embed {TEXTS[2]}")
    second = await b.ask(f"embed {TEXTS[2]}")
    assert not first["in_process"] and not second["in_process"]
    assert cosine(first["vector"], second["vector"]) > 0.9999
    new = service_status(data_dir)
    assert new["pid"] != old and service_pids(data_dir) == [new["pid"]]
    assert new["holders"] == sorted([a.pid, b.pid])  # holds survive a restart of the service
    for child in (a, b):
        await child.ask("close")
    await wait_for(lambda: service_pids(data_dir) == [])


async def test_vectors_from_the_service_equal_in_process_vectors(data_dir: Path) -> None:
    embedder = create_embedder(Settings(data_dir=data_dir))
    assert isinstance(embedder, LocalServiceEmbedder)
    async with embedder, OnnxEmbedder() as local:
        served = await embedder.embed_many(TEXTS)
        assert not embedder.in_process
        for got, want in zip(served, await local.embed_many(TEXTS), strict=True):
            assert cosine(got, want) > 0.99999
    assert service_pids(data_dir) == []


async def test_opening_does_not_wait_for_the_service(data_dir: Path) -> None:
    """What lets a stdio server answer tools/list at once: the service starts in the background."""
    embedder = create_embedder(Settings(data_dir=data_dir))
    await embedder.open(wait=False)
    try:
        assert not service_status(data_dir)["running"]  # open() returned before the service was up
        assert len(await embedder.embed("first")) == 384  # the first embed waits for it
    finally:
        await embedder.close()


async def test_the_in_process_fallback_when_the_service_cannot_start(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (data_dir / "embeddings").write_text("not a directory")  # the service's directory cannot be made
    embedder = create_embedder(Settings(data_dir=data_dir, embedding_threads=1))
    with caplog.at_level(logging.WARNING):
        async with embedder, OnnxEmbedder() as local:
            assert isinstance(embedder, LocalServiceEmbedder)
            vectors = await embedder.embed_many(TEXTS)
            vectors += [await embedder.embed("and once more")]
            assert embedder.in_process
            assert cosine(vectors[0], await local.embed(TEXTS[0])) > 0.99999
    warnings = [r for r in caplog.records if "embedding service could not start" in r.getMessage()]
    assert len(warnings) == 1
    assert "MSM_EMBEDDING_SERVICE=off" in warnings[0].getMessage()


def test_embedding_service_off_embeds_in_process(data_dir: Path) -> None:
    assert type(create_embedder(Settings(data_dir=data_dir, embedding_service="off"))) is OnnxEmbedder
