"""The layout's rules, checked on the source: drivers stay in stores/, the MCP layer holds no SQL, modules
stay small enough to read in one sitting."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mcp_shared_memory"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 420
# Drivers of the stores: only stores/ and the composition root may use them (embedded/ runs its own
# backend processes and probes them with a client of its own).
DRIVERS = {"asyncpg", "redis", "qdrant_client", "pgvector"}
MAY_USE_DRIVERS = ("stores/", "runtime.py", "embedded/")
SQL = re.compile(r"\b(SELECT|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b")


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE).as_posix()


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("path", MODULES, ids=relative)
def test_modules_stay_small(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("path", [p for p in MODULES if not relative(p).startswith(MAY_USE_DRIVERS)], ids=relative)
def test_only_stores_and_the_composition_root_use_the_drivers(path: Path) -> None:
    assert not imported_roots(path) & DRIVERS


@pytest.mark.parametrize("path", sorted((PACKAGE / "server").glob("*.py")), ids=relative)
def test_the_mcp_layer_holds_no_sql(path: Path) -> None:
    assert not SQL.search(path.read_text())


def test_nothing_outside_the_composition_root_reaches_into_the_memory_or_the_runtime() -> None:
    """SharedMemory's collaborators and the runtime's connections are private."""
    reach = re.compile(r"\b(memory|runtime)\._[a-z]")
    offenders = [relative(p) for p in MODULES if relative(p) != "runtime.py" and reach.search(p.read_text())]
    assert offenders == []


def test_a_stdio_server_answers_before_importing_the_backend_clients() -> None:
    """What ``serve`` imports before its first answer: the MCP layer and the models, not the database,
    Redis, vector or embedding clients (they load in the background, ``ServerLifespan(background=True)``)."""
    heavy = ["asyncpg", "redis", "numpy", "openai", "pgvector", "qdrant_client", "onnxruntime", "tokenizers"]
    probe = (
        "import sys, mcp_shared_memory.cli, mcp_shared_memory.server.app, mcp_shared_memory.embedded; "
        f"print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split() == []
