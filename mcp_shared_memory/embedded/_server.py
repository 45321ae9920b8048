"""The start/attach/release flow shared by the embedded servers."""

from __future__ import annotations

import abc
import atexit
import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import ClassVar, Literal

from ..errors import ConfigError, StoreUnavailable
from ._common import RunAs, check_path, flock, log_tail, make_data_dir, open_nofollow, safe_dir

log = logging.getLogger(__name__)

StartMode = Literal["initdb", "start", "attach"]

LOCK_TIMEOUT = 120.0
RELEASE_LOCK_TIMEOUT = 30.0
_DONE: dict[StartMode, str] = {"initdb": "initialised and started", "start": "started", "attach": "attached"}


class EmbeddedServer(abc.ABC):
    """A server in a data dir, shared by every local process using that data dir.

    Under an exclusive flock on ``lock_path`` (so simultaneous first starts cannot race), ``start()``
    attaches to the running server or starts it, then registers this process as a holder; ``release()``
    (also run at exit) drops the holder under the same lock and stops the server when no holder is left.
    Subclasses say how the server is started and stopped and how holders are counted.
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
        self._mutex = threading.Lock()

    # -- public ----------------------------------------------------------------------------------------

    def start(self) -> str:
        """Start the server or attach to the running one; return its URL. Blocking.

        Calling it again while holding re-checks the server and restarts it if it died.
        """
        with self._mutex:
            began = time.perf_counter()
            try:
                mode, url = self._start()
            except PermissionError as exc:
                raise ConfigError(f"permission denied on {exc.filename}; set MSM_DATA_DIR") from None
            self.url, self.start_mode = url, mode
            self.start_seconds = time.perf_counter() - began
            log.info("%s %s in %.3f s (%s)", self.name, _DONE[mode], self.start_seconds, self.home)
            return url

    def release(self) -> None:
        """Drop this holder; the last holder to leave stops the server. Idempotent; runs at exit."""
        with self._mutex:
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

    def _start(self) -> tuple[StartMode, str]:
        check_path(self.data_dir)
        make_data_dir(self.data_dir)
        if self.lock_path.parent != self.data_dir:
            safe_dir(self.lock_path.parent, uid=os.geteuid(), gid=os.getegid(), mode=0o700, what=self.name)
        with flock(self.lock_path, timeout=LOCK_TIMEOUT, what=f"the {self.name}"):
            mode, url = self._ensure_running()
            if not self._holds():
                self._hold()
                atexit.register(self.release)
        return mode, url

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
