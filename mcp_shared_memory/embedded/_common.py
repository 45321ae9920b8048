"""Locks, paths and process helpers shared by the embedded servers."""

from __future__ import annotations

import contextlib
import errno
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
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
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


def symlink_error(path: Path) -> ConfigError:
    return ConfigError(f"{path} is a symbolic link; remove it (the embedded servers never follow links)")


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symlink (a planted link would make us write or lock its target)."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise symlink_error(path) from None
        raise


class HoldersFile:
    """The file on which every holder of a server keeps a shared flock while it holds it: the kernel drops a
    dead holder's lock, however it died. Only a releaser or a reaper takes it exclusively, never for long."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def hold(self) -> None:
        if self._fd is None:
            fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_SH)
            self._fd = fd

    def drop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def none_left(self) -> bool:
        """Nobody keeps a shared flock on the file: every holder released it or died."""
        fd = open_nofollow(self.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)


def refuse_symlink(path: Path) -> None:
    """Refuse ``path`` when it is a symbolic link (for files a server program opens itself)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISLNK(path.lstat().st_mode):
            raise symlink_error(path)


def safe_dir(path: Path, *, uid: int, gid: int, mode: int, what: str) -> None:
    """Create ``path`` (not its parents) owned by ``uid`` with ``mode``, or check the one that exists.

    Refuses a symlink, a directory owned by someone else and one writable by group or others (beyond
    ``mode``): such a directory may be someone else's trap, e.g. under /tmp.
    """
    try:
        path.mkdir(mode=mode)
    except FileExistsError:
        pass
    else:
        os.chmod(path, mode)  # mkdir's mode went through the umask
        if os.geteuid() == 0 and (uid, gid) != (0, 0):
            os.chown(path, uid, gid)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid or stat.S_IMODE(st.st_mode) & ~mode & 0o077:
        raise ConfigError(
            f"{path} ({what}) must be a directory (not a link) owned by uid {uid} with mode {mode:04o}; "
            "remove it and retry, or set MSM_DATA_DIR elsewhere"
        )


def private_dir(path: Path, uid: int, gid: int) -> None:
    """A 0700 directory owned by ``uid`` (for sockets under /tmp); refuses one that someone else owns."""
    safe_dir(path, uid=uid, gid=gid, mode=0o700, what="socket directory")


def check_path(path: Path) -> None:
    if _UNSAFE_PATH_CHARS & set(str(path)):
        raise ConfigError(f"the data dir path must not contain quotes, '$', '`' or '\\': {path}")


def make_data_dir(data_dir: Path) -> None:
    """Create the data dir (0700) or check the existing one: ours, and writable by nobody else."""
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create the data dir {data_dir} ({exc.strerror}); set MSM_DATA_DIR") from None
    st = data_dir.lstat()
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"the data dir {data_dir} is not a directory; set MSM_DATA_DIR")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"the data dir {data_dir} belongs to uid {st.st_uid}, not to this user (uid {os.geteuid()}): "
            f"run as its owner, `chown {os.geteuid()} {data_dir}`, or set MSM_DATA_DIR"
        )
    if st.st_mode & 0o022:
        raise ConfigError(
            f"the data dir {data_dir} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"`chmod 700 {data_dir}`, or set MSM_DATA_DIR"
        )
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ConfigError(f"the data dir {data_dir} is not writable; set MSM_DATA_DIR")


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 64 * 1024))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
