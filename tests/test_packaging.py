"""Packaging: the migrations live in the top-level sql/ and ship inside the wheel as mcp_shared_memory/sql/;
a normal (non-editable) install applies them from there, and the editable install the suite runs on finds
them in the checkout."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import asyncpg
import pytest

from mcp_shared_memory.stores.migrations import MIGRATION_FILE, available_migrations, migrations_dir

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mcp_shared_memory"
# What `pip wheel .` must not see: VCS data, virtualenvs and build leftovers (a stale build/lib would ship
# modules deleted since).
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache")


# Run by the installed package's interpreter: where it imports the package and reads the migrations from.
WHERE = """
import json, os, sys, sysconfig
import mcp_shared_memory
from mcp_shared_memory.stores.migrations import migrations_dir
real = os.path.realpath
print(json.dumps({"prefix": real(sys.prefix), "site": real(sysconfig.get_path("purelib")),
                  "package": real(mcp_shared_memory.__file__), "sql": real(str(migrations_dir()))}))
"""


def source_migrations() -> list[str]:
    return sorted(path.name for path in (ROOT / "sql").glob("*.sql"))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel built the way `pip install .` builds one (isolated build environment with the setuptools that
    pyproject.toml requires), from a copy of the tree so that no build/ or egg-info lands in the checkout."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-q",
         "-w", str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (found,) = (work / "dist").glob("mcp_shared_memory-*.whl")
    return found


def test_sql_is_the_only_home_of_the_migrations() -> None:
    assert source_migrations(), "no sql/*.sql in the source tree"
    assert all(MIGRATION_FILE.match(name) for name in source_migrations()), source_migrations()
    assert not (PACKAGE / "sql").exists(), "migrations belong in the top-level sql/, not mcp_shared_memory/sql/"


def test_the_running_install_finds_every_migration_of_the_source_tree() -> None:
    """The suite runs on the editable install (`pip install -e .`), which reads the checkout's sql/ itself:
    a migration dropped there is applied without reinstalling."""
    found = [(f"{version:03d}_{name}.sql", sql) for version, name, sql in available_migrations()]
    assert [name for name, _ in found] == source_migrations(), f"read from {migrations_dir()}"
    for name, sql in found:
        assert sql == (ROOT / "sql" / name).read_text(encoding="utf-8"), name


def test_the_wheel_ships_every_migration_inside_the_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for migration in source_migrations():
            member = f"mcp_shared_memory/sql/{migration}"
            assert member in names, f"{migration} is missing from {wheel.name}"
            assert archive.read(member) == (ROOT / "sql" / migration).read_bytes()

    assert not {name for name in names if name.startswith("sql/")}, "sql/ must not be installed top-level"
    modules = {str(path.relative_to(ROOT)) for path in PACKAGE.rglob("*.py") if "__pycache__" not in path.parts}
    assert modules <= names, f"modules missing from the wheel: {sorted(modules - names)}"
    assert {"mcp_shared_memory/py.typed", "mcp_shared_memory/embeddings/tokenizer.json"} <= names


@pytest.mark.anyio
async def test_a_wheel_install_applies_every_migration_to_an_empty_database(
    wheel: Path, backend_env: dict[str, str], tmp_path: Path
) -> None:
    venv = tmp_path / "venv"
    await run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)])
    python = str(venv / "bin" / "python")
    # The venv sees this environment's pip and dependencies; only the package itself goes into the venv.
    await run([python, "-m", "pip", "install", "--no-deps", "--force-reinstall", "--disable-pip-version-check", "-q",
               str(wheel)])  # fmt: skip

    admin_url = backend_env["MSM_DATABASE_URL"]
    database = f"msm_packaging_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
        try:
            url = urlunsplit(urlsplit(admin_url)._replace(path=f"/{database}"))
            outputs = await migrate_twice_outside_the_checkout(python, url, backend_env, tmp_path)
            applied = await list_applied(url)
        finally:
            await admin.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
    finally:
        await admin.close()

    where, first, second = outputs
    assert where["prefix"] == str(await anyio.Path(venv).resolve())
    assert where["package"] == os.path.join(where["site"], "mcp_shared_memory", "__init__.py")
    assert where["sql"] == os.path.join(where["site"], "mcp_shared_memory", "sql")
    expected = [name.removesuffix(".sql") for name in source_migrations()]
    assert applied == expected
    assert all(name in first for name in expected), first
    assert not any(name in second for name in expected), second


async def migrate_twice_outside_the_checkout(
    python: str, database_url: str, backend_env: dict[str, str], tmp_path: Path
) -> tuple[dict[str, str], str, str]:
    """Where the venv's python imports the package and reads the migrations from, then the output of
    `python -m mcp_shared_memory migrate` run twice; the working directory is outside the checkout."""
    cwd = tmp_path / "elsewhere"
    await anyio.Path(cwd).mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSM_") and k != "PYTHONPATH"}
    env.update(
        MSM_DATABASE_URL=database_url,
        MSM_REDIS_URL=backend_env["MSM_REDIS_URL"],
        MSM_DATA_DIR=str(tmp_path / "data"),
    )
    where = await run([python, "-c", WHERE], cwd=cwd, env=env)
    first = await run([python, "-m", "mcp_shared_memory", "migrate"], cwd=cwd, env=env)
    second = await run([python, "-m", "mcp_shared_memory", "migrate"], cwd=cwd, env=env)
    return json.loads(where), first, second


async def run(command: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = await anyio.run_process(command, cwd=cwd, env=env, check=False)
    assert done.returncode == 0, f"{command[:4]} failed:\n{done.stderr.decode()[-3000:]}"
    return done.stdout.decode().strip()


async def list_applied(database_url: str) -> list[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT version, name FROM msm_schema_migrations ORDER BY version")
    finally:
        await conn.close()
    return [f"{row['version']:03d}_{row['name']}" for row in rows]
