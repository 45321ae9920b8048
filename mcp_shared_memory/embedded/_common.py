"""Locks, paths and process helpers shared by the embedded servers."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Literal

import psutil

from ..errors import ConfigError, StoreUnavailable

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
