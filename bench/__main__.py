"""``python -m bench [--quick | --full] [--only SECTION ...]``: run, print the table, write
``bench/results/<timestamp>/results.json`` and ``search_latency.png``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import anyio

from . import floors, large, notify, peer, redaction, report, retrieval, rls, scale, server, startup, throughput
from .context import Bench, open_backends
from .embedding_service import run as run_embedding
from .profile import PROFILES

SECTIONS: dict[str, Callable[[Bench], Awaitable[None]]] = {
    "floors": floors.run,
    "server": server.run,
    "notify": notify.run,
    "throughput": throughput.run,
    "scale": scale.run,
    "startup": startup.run,
    "peer": peer.run,
    "retrieval": retrieval.run,
    "redaction": redaction.run,
    "rls": rls.run,
    "large": large.run,
    "embedding": run_embedding,
    "faults": lambda bench: __import__("bench.faults", fromlist=["run"]).run(bench),  # opt-in: real faults
}
# Run only when named in --only: builds (once, then cached) a 1M-event database.
OPT_IN = ("large", "faults")
RESULTS = Path(__file__).resolve().parent / "results"
log = logging.getLogger("bench")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="profile", const="quick", help="1-3 minutes (default)")
    size.add_argument("--full", action="store_const", dest="profile", const="full", help="longer, 1M-row scale")
    parser.add_argument(
        "--only", action="append", default=[], metavar="SECTION",
        help=f"run only these sections (repeatable or comma-separated): {', '.join(SECTIONS)}; "
        f"{', '.join(OPT_IN)} only when named here",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="results dir (default bench/results/<timestamp>)")
    parser.add_argument(
        "--scale-sizes", default=None, metavar="N,N", help="override the scale section's sizes, e.g. 10000,100000"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every metric as it is measured")
    args = parser.parse_args(argv)
    args.profile = args.profile or "quick"
    only = [s.strip() for item in args.only for s in item.split(",") if s.strip()]
    if unknown := [s for s in only if s not in SECTIONS]:
        parser.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    args.sections = only or [s for s in SECTIONS if s not in OPT_IN]
    return args


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


async def backend_versions(bench: Bench) -> dict[str, Any]:
    from .floors import connect_pg, raw_redis

    info: dict[str, Any] = {"embedded": bench.backends.embedded}
    try:
        conn = await connect_pg(bench.backends.database_url)
        try:
            info["postgres"] = await conn.fetchval("SHOW server_version")
            info["pgvector"] = await conn.fetchval("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        finally:
            await conn.close()
        client = raw_redis(bench.backends.redis_url)
        try:
            server_info = await client.info("server")
            info["redis"] = server_info.get("valkey_version") or server_info.get("redis_version")
        finally:
            await client.aclose()
    except Exception as exc:
        info["error"] = f"{type(exc).__name__}: {exc}"
    return info


async def main(args: argparse.Namespace) -> int:
    profile = PROFILES[args.profile]
    if args.scale_sizes:
        profile = dataclasses.replace(profile, scale_sizes=tuple(int(s) for s in args.scale_sizes.split(",")))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / stamp
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    timings: dict[str, dict[str, Any]] = {}
    print(f"bench {profile.name}: sections {', '.join(args.sections)}; results in {out}", file=sys.stderr)
    with (out / "servers.log").open("a") as errlog:
        async with open_backends() as backends:
            bench = Bench(profile=profile, backends=backends, out_dir=out, errlog=errlog)
            for name in args.sections:
                started = time.perf_counter()
                load = os.getloadavg()[0]  # other load on the machine moves every figure: keep it on record
                print(f"  {name} ...", file=sys.stderr, flush=True)
                status = "ok"
                try:
                    with anyio.fail_after(900 if profile.name == "quick" and name not in OPT_IN else 4 * 3600):
                        await SECTIONS[name](bench)
                except Exception as exc:
                    bench.error(name, "section", exc)
                    status = "error"
                elapsed = time.perf_counter() - started
                timings[name] = {"seconds": round(elapsed, 2), "status": status, "loadavg_1m_before": load}
                print(f"  {name} done in {elapsed:.1f} s", file=sys.stderr, flush=True)
            backend_info = await backend_versions(bench)
    text = report.table(bench.metrics, list(SECTIONS))
    chart = out / "search_latency.png"
    try:
        has_chart = report.chart(chart, bench.data.get("scale", []))
    except Exception as exc:
        bench.error("report", "chart", exc)
        has_chart = False
    payload = {
        "meta": {
            "profile": profile.name,
            "started": stamp,
            "seconds": round(time.perf_counter() - began, 1),
            "sections": timings,
            "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "versions": {"mcp": version("mcp"), "mcp-shared-memory": version("mcp-shared-memory")},
            "backends": backend_info,
            "profile_settings": profile.__dict__,
        },
        "metrics": [m.as_dict() for m in bench.metrics],
        "errors": bench.errors,
        "data": bench.data,
    }
    report.write_json(out / "results.json", payload)
    (out / "table.txt").write_text(text + "\n")
    print(text)
    if bench.errors:
        print(f"\n{len(bench.errors)} error(s):")
        for error in bench.errors:
            print(f"  [{error['section']}] {error['what']}: {error['error'][:300]}")
    print(
        "\nsections: "
        + ", ".join(f"{k} {v['seconds']:.0f} s (load {v['loadavg_1m_before']:.1f})" for k, v in timings.items())
    )
    print(f"wrote {out / 'results.json'}" + (f" and {chart}" if has_chart else ""))
    print(f"total {time.perf_counter() - began:.0f} s")
    return 1 if bench.errors else 0


def run() -> None:
    args = parse_args()
    logging.basicConfig(
        stream=sys.stderr, level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s"
    )
    for noisy in ("httpx", "httpx2", "mcp", "mcp_shared_memory"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from mcp_shared_memory.embedded import install_exit_signal_handlers

    install_exit_signal_handlers()  # a terminated run still releases the embedded backends it started
    sys.exit(anyio.run(main, args))


if __name__ == "__main__":
    run()
