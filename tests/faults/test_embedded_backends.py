"""The embedded backends under faults, with real holder processes: a killed postmaster or Valkey is
restarted by a live holder (one restarter wins), eight first starts at once make one server each, and a
full disk is a clear error that clears once space returns."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import redis

from mcp_shared_memory.embedded import EmbeddedPostgres, EmbeddedValkey, _root
from mcp_shared_memory.errors import StoreUnavailable

from ..test_embedded import (
    IS_ROOT,
    Child,
    assert_stopped,
    children,  # noqa: F401 - fixture
    data_dir,  # noqa: F401 - fixture
    in_thread,
    postgres_pids,
    postmaster_pid,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)


def postmasters(directory: Path) -> list[int]:
    """Postgres processes of this PGDATA whose parent is not one of them."""
    pids = set(postgres_pids(directory))
    found = []
    for pid in pids:
        try:
            if psutil.Process(pid).ppid() not in pids:
                found.append(pid)
        except psutil.NoSuchProcess:
            pass
    return found


def ready(directory: Path) -> bool:
    lines = (EmbeddedPostgres(directory).pgdata / "postmaster.pid").read_text().splitlines()
    return len(lines) > 7 and lines[7].strip() == "ready"


def answers(directory: Path) -> bool:
    client = redis.Redis(unix_socket_path=str(EmbeddedValkey(directory).socket_path), socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def valkey_pid(directory: Path) -> int | None:
    try:
        return int((EmbeddedValkey(directory).dir / "valkey.pid").read_text())
    except (FileNotFoundError, ValueError):
        return None


def test_a_killed_postmaster_is_restarted_once_by_the_holders(data_dir: Path, children: list[Child]) -> None:  # noqa: F811
    holders = [Child(data_dir) for _ in range(3)]
    children += holders
    first = [h.ask_json("go") for h in holders][0]  # noqa: RUF015 - every holder starts
    assert holders[0].ask("write before") == "ok"

    os.kill(first["postmaster_pid"], signal.SIGKILL)
    killed = time.monotonic()
    assert wait_until(lambda: postmaster_pid(data_dir) not in (None, first["postmaster_pid"]), timeout=20)
    assert wait_until(lambda: ready(data_dir), timeout=20)
    assert wait_until(lambda: len(postmasters(data_dir)) == 1)
    assert holders[2].ask("write after") == "ok"  # every holder's URL still works
    assert time.monotonic() - killed < 10
    assert holders[1].ask_json("read")["rows"] == ["after", "before"]
    assert len(postmasters(data_dir)) == 1  # the holders raced to restart it; one won, the others attached

    for h in holders:
        assert h.ask("release") == "released"
    assert_stopped(data_dir)


def test_a_killed_valkey_is_restarted_by_a_holder(data_dir: Path, children: list[Child]) -> None:  # noqa: F811
    a, b = Child(data_dir), Child(data_dir)
    children += [a, b]
    before = a.ask_json("go")["valkey_pid"]
    b.ask_json("go")
    os.kill(before, signal.SIGKILL)
    assert wait_until(lambda: valkey_pid(data_dir) not in (None, before) and answers(data_dir), timeout=20)
    assert b.ask("write k") == "ok"
    assert a.ask("release") == "released"
    assert b.ask_json("read")["keys"] == ["k"]  # b's restarted hold still counts
    assert b.ask("release") == "released"
    assert_stopped(data_dir)


def test_eight_processes_starting_at_once_on_an_empty_data_dir_share_one_server_each(
    data_dir: Path,  # noqa: F811
    children: list[Child],  # noqa: F811
) -> None:
    holders = [Child(data_dir) for _ in range(8)]
    children += holders
    for h in holders:  # all eight race for the first start
        h.send("go")
    infos = [__import__("json").loads(h.readline()) for h in holders]
    assert len({i["postmaster_pid"] for i in infos}) == 1
    assert len({i["valkey_pid"] for i in infos}) == 1
    assert sorted(i["postgres_mode"] for i in infos).count("initdb") == 1
    assert len(postmasters(data_dir)) == 1
    for h in holders:
        assert h.ask("release") == "released"
    assert_stopped(data_dir)


def _fill(path: Path) -> None:
    """Write zeros to ``path`` until the device is full."""
    block = b"\0" * (1 << 20)
    with open(path, "wb") as f:
        try:
            while True:
                f.write(block)
                f.flush()
        except OSError:
            pass


@pytest.mark.skipif(not IS_ROOT, reason="needs root to mount a small tmpfs for the embedded PostgreSQL's files")
def test_a_full_disk_is_a_clear_error_and_the_server_comes_back_once_space_returns(data_dir: Path) -> None:  # noqa: F811
    pg = EmbeddedPostgres(data_dir)
    home = _root.service_dir(data_dir)  # as root PGDATA lives here
    home.parent.mkdir(mode=0o711, parents=True, exist_ok=True)
    home.mkdir(mode=0o711)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=160m,mode=0711", "tmpfs", str(home)], check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (no CAP_SYS_ADMIN)")
    filler = home / "filler"
    try:
        _fill(filler)
        with pytest.raises(StoreUnavailable, match="no space left on the device"):
            in_thread(pg.start)
        filler.unlink()
        dsn = in_thread(pg.start)
        assert pg.start_mode == "initdb" and dsn

        _fill(filler)  # full again, then the postmaster dies: the holder keeps trying to restart it
        os.kill(pg._server_pid() or 0, signal.SIGKILL)
        assert wait_until(lambda: not postgres_pids(data_dir), timeout=20)
        filler.unlink()
        assert wait_until(lambda: pg.restarts == 1, timeout=20)  # restarted once space returned
        in_thread(pg.release)
        assert_stopped(data_dir)
    finally:
        filler.unlink(missing_ok=True)
        in_thread(pg.release)
        wait_until(lambda: not postgres_pids(data_dir))
        subprocess.run(["umount", "-l", str(home)], check=False)
