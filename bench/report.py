"""The printed table, results.json and the search-latency chart."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .stats import Metric

COLUMNS = ("metric", "n", "p50 ms", "p99 ms", "value", "floor p50/p99|value", "x p50", "x p99", "target", "ok")
NAME_WIDTH = 66


def fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.{digits}f}"


def row(metric: Metric) -> list[str]:
    if metric.floor_p50 is not None:
        floor = f"{fmt(metric.floor_p50)}/{fmt(metric.floor_p99)}"
    elif metric.floor_value is not None:
        floor = fmt(metric.floor_value)
    else:
        floor = "-"
    value = "-" if metric.value is None else f"{fmt(metric.value, 3)} {metric.unit.split(';')[-1].strip()}"
    ok = "" if metric.ok is None else ("yes" if metric.ok else "NO")
    name = metric.name if len(metric.name) <= NAME_WIDTH else metric.name[: NAME_WIDTH - 1] + "~"
    return [
        name, str(metric.n), fmt(metric.p50, 3), fmt(metric.p99, 3), value, floor,
        fmt(metric.ratio_p50), fmt(metric.ratio_p99), metric.target or "", ok,
    ]  # fmt: skip


def table(metrics: Iterable[Metric], order: list[str]) -> str:
    metrics = sorted(metrics, key=lambda m: order.index(m.section) if m.section in order else len(order))
    rows = [(m, row(m)) for m in metrics]
    widths = [max(len(c), *(len(r[i]) for _, r in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
    widths[0] = max(widths[0], 20)

    def line(cells: list[str] | tuple[str, ...]) -> str:
        out = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    lines = [line(COLUMNS), "-" * len(line(COLUMNS))]
    section = None
    for metric, cells in rows:
        if metric.section != section:
            section = metric.section
            lines.append(f"[{section}]")
        lines.append(line(cells))
        details = [d for d in (f"floor: {metric.floor}" if metric.floor else "", metric.note) if d]
        if details:
            lines.append("      " + "; ".join(details))
    return "\n".join(lines)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, default=str))


def chart(path: Path, points: list[dict[str, Any]]) -> bool:
    """Search latency (p50 solid, p99 dashed) against data size, small and large scope."""
    if not points:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5))
    styles = {"search_shared": ("SharedMemory.search_shared", "o"), "raw_sql": ("raw SQL k-NN (floor)", "s")}
    colours = {"small": "tab:blue", "large": "tab:red"}
    for cell in ("small", "large"):
        series = sorted((p for p in points if p["cell"] == cell), key=lambda p: p["size"])
        if not series:
            continue
        sizes = [p["size"] for p in series]
        for key, (label, marker) in styles.items():
            for pct, dash in (("p50", "-"), ("p99", "--")):
                ax.plot(
                    sizes, [p[key][pct] for p in series], dash, marker=marker, color=colours[cell],
                    alpha=1.0 if key == "search_shared" else 0.5,
                    label=f"{cell} scope: {label} {pct}",
                )  # fmt: skip
        ax.plot(
            sizes, [p["episodic_search"]["p50"] for p in series], ":", marker="^", color=colours[cell],
            label=f"{cell} scope: PostgresEpisodicStore.search (vector given) p50",
        )  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("events in the table")
    ax.set_ylabel("latency (ms)")
    ax.set_title("Scoped semantic search latency vs data size (small scope ~100 rows, large ~10% of rows)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
