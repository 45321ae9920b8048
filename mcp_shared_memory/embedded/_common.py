"""Locks, paths and process helpers shared by the embedded servers."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil

from ..errors import ConfigError, StoreUnavailable

_SOCKET_MAX = 103 if sys.platform == "darwin" else 107
_UNSAFE_PATH_CHARS = set("\"'$`\\\n")


@dataclass(frozen=True)
class RunAs:
    """Who runs a server's programs: ourselves, or (as root) a system user."""

    uid: int
    gid: int
    name: str | None  # None: the current user

    @classmethod
    def current(cls) -> RunAs:
        return cls(os.geteuid(), os.getegid(), None)


@contextlib.contextmanager
def flock(path: Path, *, timeout: float, what: str) -> Iterator[None]:
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


def wait_until(condition: Callable[[], bool], *, timeout: float, interval: float) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def pid_alive(pid: int) -> bool:
    """True when ``pid`` runs; zombies count as dead (PID 1 in containers often never reaps them)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def process_in(pid: int, directory: Path) -> psutil.Process | None:
    """The live process ``pid`` if its working directory is ``directory`` (so not a reused pid), else None.

    ``psutil.AccessDenied`` (another user's process) is left to the caller.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or Path(proc.cwd()) != directory:
            return None
        return proc
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None


def socket_path_fits(path: Path) -> bool:
    return len(os.fsencode(path)) <= _SOCKET_MAX


def path_hash(path: Path) -> str:
    return hashlib.sha256(os.fsencode(path)).hexdigest()[:12]


def private_dir(path: Path, uid: int, gid: int) -> None:
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


def check_path(path: Path) -> None:
    if _UNSAFE_PATH_CHARS & set(str(path)):
        raise ConfigError(f"the data dir path must not contain quotes, '$', '`' or '\\': {path}")


def make_data_dir(data_dir: Path) -> None:
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data dir {data_dir} ({exc.strerror}); set MSM_DATA_DIR") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"the data dir {data_dir} is not writable; set MSM_DATA_DIR")


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
