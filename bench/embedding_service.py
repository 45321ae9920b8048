"""The machine's embedding service: resident memory of a stdio server using it vs one embedding in-process,
and the service's rate with 16 client processes vs the model's batched rate in-process (same run).

``python -m bench.embedding_service client DATA_DIR N SIZE`` is one client process: it attaches to the
service of DATA_DIR, says ``ready``, waits for ``go`` on stdin, embeds N new sentences in requests of SIZE
texts (one after another, as one agent's writes), and prints ``done``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.to_thread

from .context import Bench
from .procs import REPO, check, find_child, serve_params, stdio_client_for
from .stats import Metric
from .text import Sentences

SECTION = "embedding"
MB = 1024 * 1024
CLIENTS = 16
BATCH = 32


async def run(bench: Bench) -> None:
    data_dir = bench.backends.data_dir / "embedding-bench"
    floor_texts = BATCH * (12 if bench.profile.name == "quick" else 40)
    try:
        for size in (1, 8):
            per_client = (24 if bench.profile.name == "quick" else 96) * (1 if size == 1 else 4)
            # The floor is measured right before and after, so other load on the machine moves both alike.
            before = await in_process_rate(texts=floor_texts)
            rate, stats = await service_rate(data_dir, per_client=per_client, size=size)
            in_process = (before + await in_process_rate(texts=floor_texts)) / 2
            bench.add(
                Metric(
                    section=SECTION,
                    name=f"service, {CLIENTS} client processes, {size} text(s)/request",
                    unit="texts/s",
                    value=rate,
                    floor="model in-process, batches of 32",
                    floor_value=in_process,
                    ratio_p50=rate / in_process,
                    target=">= 0.9",
                    ok=rate / in_process >= 0.9,
                    note=f"mean model batch {stats.get('mean_batch')}",
                    extra=stats,
                )
            )
    except Exception as exc:
        bench.error(SECTION, "throughput", exc)
    try:
        await resident_memory(bench)
    except Exception as exc:
        bench.error(SECTION, "rss", exc)


async def in_process_rate(*, texts: int) -> float:
    from mcp_shared_memory.embeddings.local import OnnxEmbedder

    words = Sentences(seed=71)
    async with OnnxEmbedder() as embedder:  # the server's defaults: batch 32, every core
        await embedder.embed_many(words.batch(BATCH))
        began = time.perf_counter()
        for _ in range(texts // BATCH):
            await embedder.embed_many(words.batch(BATCH))
        return (texts // BATCH) * BATCH / (time.perf_counter() - began)


async def service_rate(data_dir: Path, *, per_client: int, size: int) -> tuple[float, dict[str, object]]:
    """Texts/s through the service, ``CLIENTS`` processes each sending ``per_client`` texts in requests of ``size``."""
    from mcp_shared_memory.embedded.embedding_service import EmbeddedEmbeddingService

    service = EmbeddedEmbeddingService(data_dir)
    await anyio.to_thread.run_sync(service.start)
    procs: list[subprocess.Popen[str]] = []
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        args = [sys.executable, "-m", "bench.embedding_service", "client", str(data_dir), str(per_client), str(size)]
        procs = _spawn(args, env)
        with anyio.fail_after(120):
            for proc in procs:
                assert await _line(proc) == "ready"
        before = service.status()
        began = time.perf_counter()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        with anyio.fail_after(600):
            for proc in procs:
                assert await _line(proc) == "done"
        elapsed = time.perf_counter() - began
        after = service.status()
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        await anyio.to_thread.run_sync(service.release)
    batches = int(after["batches"]) - int(before["batches"])
    texts = int(after["texts"]) - int(before["texts"])
    stats = {"batches": batches, "texts": texts, "mean_batch": round(texts / batches, 1) if batches else None}
    return CLIENTS * per_client / elapsed, stats


def _spawn(args: list[str], env: dict[str, str]) -> list[subprocess.Popen[str]]:
    return [
        subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO, env=env)
        for _ in range(CLIENTS)
    ]


async def _line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    return (await anyio.to_thread.run_sync(proc.stdout.readline, abandon_on_cancel=True)).strip()


async def resident_memory(bench: Bench) -> None:
    """RSS of a stdio server after the same warm-up, with the embedding service and with the model in-process."""
    words = Sentences(seed=73)
    rss: dict[str, float] = {}
    service_rss = None
    for mode in ("auto", "off"):
        marker = f"rss-emb-{mode}-{bench.run_id}"
        env = bench.backends.server_env(tenant=bench.tenant(f"rss-{mode}"), scope="user:alice", embedding_service=mode)
        async with stdio_client_for(serve_params(env, "--agent-id", marker), bench.errlog) as client:
            for _ in range(30):
                check(await client.call_tool("write_event", {"content": words.next()}), "write_event")
                check(await client.call_tool("get_recent_shared", {}), "get_recent_shared")
            if mode == "auto":  # writes do not wait for the model: let the service come up (and embed) first
                service_rss = await _service_rss(Path(env["MSM_DATA_DIR"]))
                check(await client.call_tool("write_event", {"content": words.next()}), "write_event")
            proc = find_child(marker)
            if proc is None:
                raise RuntimeError("server process not found")
            rss[mode] = proc.memory_info().rss / MB
    bench.add(
        Metric(
            section=SECTION,
            name="serve (stdio) RSS, model in the embedding service",
            unit="MB",
            n=1,
            value=rss["auto"],
            floor="serve (stdio) RSS, model in-process",
            floor_value=rss["off"],
            ratio_p50=rss["auto"] / rss["off"],
            target="<= 100 MB",
            ok=rss["auto"] <= 100,
            note=f"the one embedding service: {service_rss:.0f} MB" if service_rss else "",
            extra={"service_rss_mb": service_rss, "in_process_rss_mb": rss["off"]},
        )
    )


async def _service_rss(data_dir: Path) -> float:
    import psutil

    from mcp_shared_memory.embedded.embedding_service import service_status

    with anyio.fail_after(120):
        status = await anyio.to_thread.run_sync(service_status, data_dir)
        while not status["running"]:  # polled: the service is another process's child
            await anyio.sleep(0.1)
            status = await anyio.to_thread.run_sync(service_status, data_dir)
    return float(psutil.Process(status["pid"]).memory_info().rss / MB)


# -- a client process ---------------------------------------------------------------------------------


async def _client(data_dir: Path, n: int, size: int) -> None:
    from mcp_shared_memory.embeddings import create_embedder
    from mcp_shared_memory.settings import Settings

    words = Sentences(seed=os.getpid())
    async with create_embedder(Settings(data_dir=data_dir)) as embedder:
        await embedder.embed("warm-up")
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        for _ in range(n // size):
            await embedder.embed_many(words.batch(size))
    print("done", flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["client"]:
    asyncio.run(_client(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
