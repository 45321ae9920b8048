"""Stop an embedded server once every holder died without releasing it.

    python -I _reaper.py LOCK HOLDERS PID SIGNAL

Started (detached) by whoever starts the server. Holders keep a shared flock on HOLDERS; the kernel drops a
dead holder's lock. When the reaper can take HOLDERS exclusively, it takes LOCK (the start/stop lock: a
starter registers its hold under it, so what it sees then is final), checks again, and sends SIGNAL (the
server's clean shutdown) to PID. It exits once that process is gone, whoever stopped it.

Run by path with ``-I`` and only the standard library: it must cost almost nothing while it waits, and must
not depend on the environment of the process that started it. The server process is held by a pidfd, so a
reused pid is never signalled (Linux ≥ 5.3; elsewhere the pid is checked by polling).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator

POLL_SECONDS = 1.0
STOP_SECONDS = 60.0


def _opened(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _free(holders: str) -> bool:
    """No holder left: the shared locks are all gone."""
    fd = _opened(holders)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    fd = _opened(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _watch(pid: int) -> tuple[Callable[[float], bool], Callable[[int], None]]:
    """``exited(timeout)`` waits up to ``timeout`` seconds for the process to exit; ``kill(sig)`` signals it."""
    if hasattr(os, "pidfd_open"):
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)

        def exited(timeout: float) -> bool:
            return bool(poller.poll(int(timeout * 1000)))

        return exited, lambda sig: signal.pidfd_send_signal(pidfd, sig)

    def gone() -> bool:
        try:
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True
        except PermissionError:
            return False

    def polled(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not gone():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    return polled, lambda sig: os.kill(pid, sig)


def reap(lock: str, holders: str, pid: int, sig: int) -> None:
    try:
        exited, kill = _watch(pid)
    except ProcessLookupError:
        return
    while not exited(POLL_SECONDS):
        if not _free(holders):
            continue
        with _locked(lock):
            if exited(0) or not _free(holders):
                continue
            print(f"reaper: no holder left; stopping the server (pid {pid})", file=sys.stderr, flush=True)
            with contextlib.suppress(ProcessLookupError):
                kill(sig)
            exited(STOP_SECONDS)  # under the lock, so that no starter attaches to a server shutting down
            return


def main() -> None:
    lock, holders, pid, sig = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if os.fork():  # the starter waits for this first process only; the reaper lives on, reparented
        os._exit(0)
    os.setsid()
    reap(lock, holders, pid, sig)


if __name__ == "__main__":
    main()
