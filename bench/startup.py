"""Start-up of ``serve`` over stdio (process spawn -> first answered ``tools/list``) and resident memory.

cold: fresh data dir (initdb + Valkey start); warm: the data dir exists, its servers are stopped;
attach: another process holds the embedded servers; configured: MSM_DATABASE_URL / MSM_REDIS_URL set.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
from mcp import StdioServerParameters

from .procs import check, clean_env, find_child, serve_params, stdio_client_for, trivial_params
from .stats import Metric, Summary, latency_metric
from .text import Sentences

if TYPE_CHECKING:
    from .context import Bench

SECTION = "startup"
MB = 1024 * 1024


async def time_startup(bench: Bench, params: StdioServerParameters) -> float:
    """Process spawn -> first answered tools/list."""
    with anyio.fail_after(180):
        start = time.perf_counter()
        async with stdio_client_for(params, bench.errlog) as client:
            await client.list_tools()
            elapsed = time.perf_counter() - start
    return elapsed


async def time_first_search(bench: Bench, params: StdioServerParameters) -> tuple[float, float]:
    """(spawn -> tools/list, spawn -> first search_shared answered): the model may load after tools/list."""
    with anyio.fail_after(180):
        start = time.perf_counter()
        async with stdio_client_for(params, bench.errlog) as client:
            await client.list_tools()
            listed = time.perf_counter() - start
            check(await client.call_tool("search_shared", {"query": "what did we decide"}), "search_shared")
            searched = time.perf_counter() - start
    return listed, searched


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = clean_env()
    env.update(MSM_DATA_DIR=str(data_dir), MSM_TENANT="startup", MSM_SCOPE="user:alice", MSM_LOG_LEVEL="WARNING")
    return env


async def wait_stopped(data_dir: Path, seconds: float = 30) -> None:
    """Until the embedded PostgreSQL and Valkey of ``data_dir`` have stopped (last holder exited)."""
    deadline = time.monotonic() + seconds
    while (data_dir / "pg" / "postmaster.pid").exists() or (data_dir / "valkey" / "valkey.pid").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"embedded servers of {data_dir} still running after {seconds:.0f} s")
        await anyio.sleep(0.05)


async def run(bench: Bench) -> None:
    p = bench.profile
    try:
        samples = [await time_startup(bench, trivial_params()) for _ in range(p.startup_repeats)]
        trivial = Summary.of(samples)
        bench.add(latency_metric(SECTION, "SDK trivial server: spawn -> tools/list (floor)", trivial))
    except Exception as exc:
        bench.error(SECTION, "trivial", exc)
        trivial = None

    def add(name: str, samples: list[float], note: str = "") -> None:
        bench.add(
            latency_metric(
                SECTION, name, Summary.of(samples), floor=trivial, floor_name="SDK trivial start-up", note=note
            )
        )

    try:
        env = bench.backends.server_env(tenant="startup", scope="user:alice")
        pairs = [await time_first_search(bench, serve_params(env)) for _ in range(p.startup_repeats)]
        add("serve, backends configured by URL", [listed for listed, _ in pairs])
        add("  same: spawn -> first search_shared answered", [searched for _, searched in pairs],
            note="includes loading the embedding model")  # fmt: skip
    except Exception as exc:
        bench.error(SECTION, "configured", exc)

    cold_dirs: list[Path] = []
    try:
        cold = []
        for r in range(p.cold_repeats):
            data_dir = bench.backends.data_dir / f"startup-cold-{r}"
            cold_dirs.append(data_dir)
            cold.append(await time_startup(bench, serve_params(embedded_env(data_dir))))
            await wait_stopped(data_dir)
        add("serve, embedded, cold (fresh data dir)", cold, note="initdb + Valkey start + migrations")
    except Exception as exc:
        bench.error(SECTION, "cold", exc)
    if cold_dirs:
        data_dir = cold_dirs[-1]
        try:
            warm = []
            for _ in range(p.startup_repeats):
                await wait_stopped(data_dir)
                warm.append(await time_startup(bench, serve_params(embedded_env(data_dir))))
            add("serve, embedded, warm (servers stopped)", warm)
        except Exception as exc:
            bench.error(SECTION, "warm", exc)
        try:
            await wait_stopped(data_dir)
            add("serve, embedded, attach (another process holds them)", await attached(bench, data_dir))
        except Exception as exc:
            bench.error(SECTION, "attach", exc)
    await resident_memory(bench)


async def attached(bench: Bench, data_dir: Path) -> list[float]:
    from mcp_shared_memory.embedded import start_embedded

    held = await anyio.to_thread.run_sync(lambda: start_embedded(data_dir, postgres=True, redis=True))
    try:
        return [
            await time_startup(bench, serve_params(embedded_env(data_dir)))
            for _ in range(bench.profile.startup_repeats)
        ]
    finally:
        await anyio.to_thread.run_sync(held.release)


async def resident_memory(bench: Bench) -> None:
    """RSS of a stdio server after a warm-up of writes and searches, beside the trivial server's."""
    words = Sentences(seed=41)
    try:
        async with stdio_client_for(trivial_params(), bench.errlog) as client:
            for _ in range(20):
                check(await client.call_tool("const", {}), "const")
            proc = find_child("trivial_server.py")
            trivial_rss = proc.memory_info().rss / MB if proc else None
        marker = f"rss-{bench.run_id}"
        env = bench.backends.server_env(tenant=bench.tenant("rss"), scope="user:alice")
        async with stdio_client_for(serve_params(env, "--agent-id", marker), bench.errlog) as client:
            for _ in range(30):
                check(await client.call_tool("write_event", {"content": words.next()}), "write_event")
                check(await client.call_tool("search_shared", {"query": words.query()}), "search_shared")
                check(await client.call_tool("get_recent_shared", {}), "get_recent_shared")
            proc = find_child(marker)
            if proc is None:
                raise RuntimeError("server process not found")
            rss = proc.memory_info().rss / MB
        metric = Metric(
            section=SECTION, name="serve (stdio) RSS after warm-up", unit="MB", n=1, value=rss,
            note="30 writes + 30 searches + 30 recent reads",
        )  # fmt: skip
        if trivial_rss:
            metric.floor, metric.floor_value, metric.ratio_p50 = (
                "SDK trivial server RSS",
                trivial_rss,
                rss / trivial_rss,
            )
        bench.add(metric)
    except Exception as exc:
        bench.error(SECTION, "rss", exc)
