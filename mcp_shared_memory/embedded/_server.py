"""The start/attach/release flow shared by the embedded servers."""

from __future__ import annotations

import abc
import atexit
import errno
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import ClassVar, Literal

from ..errors import ConfigError, StoreUnavailable
from ._common import HoldersFile, RunAs, check_path, flock, log_tail, make_data_dir, open_nofollow, safe_dir

log = logging.getLogger(__name__)

StartMode = Literal["initdb", "start", "attach"]

LOCK_TIMEOUT = 120.0
RELEASE_LOCK_TIMEOUT = 30.0
SUPERVISE_INTERVAL = 0.2  # how often a holder checks that its server still runs
RESTART_BACKOFF_MAX = 5.0  # seconds between restart attempts that keep failing (a full disk)
_REAPER = Path(__file__).with_name("_reaper.py")
_DONE: dict[StartMode, str] = {"initdb": "initialised and started", "start": "started", "attach": "attached"}


class EmbeddedServer(abc.ABC):
    """A server in a data dir, shared by every local process using that data dir.

    Under an exclusive flock on ``lock_path`` (so simultaneous first starts cannot race), ``start()``
    attaches to the running server or starts it, then registers this process as a holder; ``release()``
    (also run at exit) drops the holder under the same lock and stops the server when no holder is left.
    Subclasses say how the server is started and stopped and how holders are counted.

    Two things keep the server's life tied to its holders when processes die:

    - every holder runs a supervisor thread that notices the server died (SIGKILL, OOM) and starts it
      again, under the same flock: the first to get it restarts the server, the others attach to it;
    - whoever starts the server also starts a reaper (``_reaper.py``, a detached stdlib-only process)
      that stops it once no holder is left, when the last ones died without releasing it.
    """

    name: ClassVar[str]  # "embedded PostgreSQL", for messages
    home: Path  # the server's directory, for messages
    log_path: Path
    lock_path: Path

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.url: str | None = None
        self.start_mode: StartMode | None = None
        self.start_seconds: float | None = None
        self.restarts = 0  # how often this holder's supervisor restarted (or re-attached to) the server
        self._held_pid: int | None = None  # the server process this holder attached to
        self._mutex = threading.Lock()
        self._supervisor: threading.Thread | None = None
        self._stop_supervising = threading.Event()

    # -- public ----------------------------------------------------------------------------------------

    def start(self) -> str:
        """Start the server or attach to the running one; return its URL. Blocking.

        Calling it again while holding re-checks the server and restarts it if it died.
        """
        with self._mutex:
            began = time.perf_counter()
            mode, url = self._start_translated()
            self.url, self.start_mode = url, mode
            self.start_seconds = time.perf_counter() - began
            log.info("%s %s in %.3f s (%s)", self.name, _DONE[mode], self.start_seconds, self.home)
            self._supervise()
            return url

    def release(self) -> None:
        """Drop this holder; the last holder to leave stops the server. Idempotent; runs at exit.

        Safe while a ``start()`` of this holder runs in another thread (an embedder closed while its
        service was still starting): it waits for that start, then stops the supervisor it began."""
        with self._mutex:
            self._stop_supervising.set()
            supervisor, self._supervisor = self._supervisor, None
        # Joined outside the mutex, which the supervisor takes for each check.
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout=RELEASE_LOCK_TIMEOUT)
        with self._mutex:
            # A start() in between began another supervisor: stopped too (it checks under the mutex).
            self._stop_supervising.set()
            self._supervisor = None
            if not self._holds():
                return
            atexit.unregister(self.release)
            try:
                with flock(self.lock_path, timeout=RELEASE_LOCK_TIMEOUT, what=f"the {self.name}"):
                    if self._leave():
                        self._stop()
            except Exception as exc:
                log.warning("releasing the %s in %s failed: %s", self.name, self.home, exc)
            finally:
                self._drop_hold()
                self.url = None

    # -- the flow ----------------------------------------------------------------------------------------

    def _start_translated(self) -> tuple[StartMode, str]:
        try:
            return self._start()
        except PermissionError as exc:
            raise ConfigError(f"permission denied on {exc.filename}; set MSM_DATA_DIR") from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._no_space() from None
            raise
        except StoreUnavailable:
            if "No space left on device" in log_tail(self.log_path):
                raise self._no_space() from None
            raise

    def _no_space(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"no space left on the device holding the {self.name} ({self.home}): free some space; the server "
            "is started again once there is"
        )

    def _start(self) -> tuple[StartMode, str]:
        check_path(self.data_dir)
        make_data_dir(self.data_dir)
        if self.lock_path.parent != self.data_dir:
            safe_dir(self.lock_path.parent, uid=os.geteuid(), gid=os.getegid(), mode=0o700, what=self.name)
        with flock(self.lock_path, timeout=LOCK_TIMEOUT, what=f"the {self.name}"):
            mode, url = self._ensure_running()
            self._held_pid = self._server_pid()
            if mode != "attach":
                self._spawn_reaper()
            if not self._holds():
                self._hold()
                atexit.unregister(self.release)  # once, however often the supervisor re-holds
                atexit.register(self.release)
        return mode, url

    def _supervise(self) -> None:
        if self._supervisor is not None and self._supervisor.is_alive():
            return
        stop = threading.Event()
        supervisor = threading.Thread(
            target=self._supervision, args=(stop,), name=f"msm-supervise-{self.name}", daemon=True
        )
        supervisor.start()  # kept only once started: a release() joins what it finds
        self._stop_supervising, self._supervisor = stop, supervisor

    def _supervision(self, stop: threading.Event) -> None:
        """Restart the server whenever it died, until this holder releases it; back off while that fails."""
        delay, failing = SUPERVISE_INTERVAL, ""
        while not stop.wait(delay):
            if not self._mutex.acquire(timeout=SUPERVISE_INTERVAL):
                continue  # a start() or release() of this holder is under way
            try:
                # A server restarted by another holder between two checks is one to attach to again.
                if stop.is_set() or not self._holds() or (self._running() and self._server_pid() == self._held_pid):
                    delay = SUPERVISE_INTERVAL
                    continue
                log.warning("the %s (%s) died; restarting it", self.name, self.home)
                try:
                    mode, self.url = self._start_translated()
                except (StoreUnavailable, ConfigError, OSError) as exc:
                    if str(exc) != failing:
                        log.error("restarting the %s failed (retrying): %s", self.name, exc)
                    failing, delay = str(exc), min(max(delay * 2, 0.5), RESTART_BACKOFF_MAX)
                    continue
                self.restarts += 1
                failing, delay = "", SUPERVISE_INTERVAL
                log.warning("the %s %s again after it died", self.name, "attached" if mode == "attach" else "started")
            finally:
                self._mutex.release()

    def _spawn_reaper(self) -> None:
        """Under the lock, after starting the server: a detached process that stops it once every holder
        died without releasing it (a live holder's release() or the reaper: whichever sees no holder left)."""
        pid, holders = self._server_pid(), self._holders_file()
        if pid is None or holders is None:
            return
        args = [sys.executable, "-I", str(_REAPER), str(self.lock_path), str(holders)]
        args += [str(pid), str(int(self._reap_signal))]
        try:
            with open(open_nofollow(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as logf:
                # The reaper forks and its first process exits at once: nobody has to wait for it.
                done = subprocess.run(args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd="/", timeout=10)
                done.check_returncode()
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning("no reaper for the %s (%s): if all holders die, it runs on", self.name, exc)

    def _run(
        self,
        args: list[str],
        *,
        what: str,
        timeout: float,
        cwd: Path,
        env: dict[str, str] | None = None,
        run_as: RunAs | None = None,
    ) -> None:
        """Run a program of the server with its output appended to the log; raise when it fails."""
        other = run_as if run_as is not None and run_as.name is not None else None  # a user to switch to
        with open(open_nofollow(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as logf:
            if other is not None and self.log_path.parent.stat().st_uid == other.uid:
                os.fchown(logf.fileno(), other.uid, other.gid)  # a log in the server's own dir: it reopens it
            logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {what}\n".encode())
            logf.flush()
            try:
                done = subprocess.run(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=logf,
                    stderr=logf,
                    env=env,
                    cwd=cwd,
                    timeout=timeout,
                    check=False,
                    user=None if other is None else other.uid,
                    group=None if other is None else other.gid,
                    extra_groups=None if other is None else [],
                )
            except subprocess.TimeoutExpired:
                raise StoreUnavailable(
                    f"the {self.name} did not finish {what} within {timeout:.0f} s; see {self.log_path}"
                ) from None
            except OSError as exc:
                raise StoreUnavailable(
                    f"cannot run {args[0]} for the {self.name} ({exc.strerror}); see {self.log_path}"
                ) from None
        if done.returncode != 0:
            log.error("%s %s failed; end of %s:\n%s", self.name, what, self.log_path, log_tail(self.log_path))
            raise StoreUnavailable(f"the {self.name} failed ({what}); see {self.log_path}")

    # -- what each server does ---------------------------------------------------------------------------

    # Supervision and reaping are opt-in: a server that keeps the defaults is neither restarted nor reaped.
    _holders: HoldersFile | None = None  # set by a server whose holders keep a flock (see HoldersFile)
    _reap_signal: ClassVar[signal.Signals] = signal.SIGTERM  # the signal that makes the server shut down cleanly

    def _running(self) -> bool:
        """Whether the server process runs (cheap: checked a few times a second, without the lock)."""
        return True

    def _server_pid(self) -> int | None:
        """The running server's pid (for the supervisor and the reaper)."""
        return None

    def _holders_file(self) -> Path | None:
        """The file every holder keeps a shared flock on, which the reaper watches (None: no reaper)."""
        return self._holders.path if self._holders is not None else None

    @abc.abstractmethod
    def _ensure_running(self) -> tuple[StartMode, str]:
        """Under the lock: attach to the running server, or clean up after a dead one and start it."""

    @abc.abstractmethod
    def _holds(self) -> bool:
        """Whether this object is registered as a holder."""

    @abc.abstractmethod
    def _hold(self) -> None:
        """Under the lock: register this object as a holder, counted by the other processes."""

    @abc.abstractmethod
    def _leave(self) -> bool:
        """Under the lock: whether this is the last holder (it may drop its own hold already)."""

    @abc.abstractmethod
    def _drop_hold(self) -> None:
        """Stop counting as a holder (idempotent; without the lock when releasing failed)."""

    @abc.abstractmethod
    def _stop(self) -> None:
        """Under the lock, once the last holder left: stop the server."""
