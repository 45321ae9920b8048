"""The machine's embedding service (``embeddings/service_app.py``) on a unix socket, shared by local processes.

Layout of ``<data_dir>/embeddings``::

    start.lock        exclusive flock around start/stop
    holders           every holder keeps a shared flock on it; the kernel drops it when a holder dies
    service.pid       the service's pid, written by the process that started it
    service.log       the service's output
    embeddings.sock   the HTTP socket (``/tmp/msm-embed-<hash>/`` when the path is too long for a socket)

Start, attach and release follow ``EmbeddedServer``: the first process to call ``start()`` spawns the service
(in a session of its own, so it outlives its starter), later ones attach, the last holder to ``release()``
stops it. The service also watches the holders itself: once none is left and no start is under way (its
last holder was SIGKILLed), it removes its socket under the start lock and exits. A SIGKILLed service is
restarted by the next ``start()``, which clients call when a request fails.

The service runs as the current user (as root too: it opens no file of the data dir but its own).
Run ``python -m mcp_shared_memory.embedded.embedding_service --help`` for the process's own options.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

import psutil

from ..errors import ConfigError, StoreUnavailable
from ._common import (
    HoldersFile,
    log_tail,
    open_nofollow,
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
ProbeState = Literal["up", "busy", "down"]

SERVICE_START_TIMEOUT = 60.0  # imports and the model load take ~1.5 s; a loaded machine takes longer
SERVICE_STOP_TIMEOUT = 10.0
HOLDER_CHECK_SECONDS = 1.0


def http_get(socket_path: Path, route: str, *, timeout: float) -> tuple[int, bytes]:
    """``GET route`` over the unix socket: (status, body). Raises OSError (``TimeoutError`` when slow)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(socket_path))
        sock.sendall(f"GET {route} HTTP/1.1\r\nHost: embedding-service\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    try:
        return int(head.split(b" ", 2)[1]), body
    except (IndexError, ValueError):
        raise ConnectionError("not an HTTP answer") from None


def probe(socket_path: Path, timeout: float = 0.5) -> ProbeState:
    try:
        if not stat.S_ISSOCK(socket_path.lstat().st_mode):
            return "down"
        code, _ = http_get(socket_path, "/health", timeout=timeout)
    except TimeoutError:
        return "busy"
    except OSError:
        return "down"
    return "up" if code == 200 else "down"


class EmbeddedEmbeddingService(EmbeddedServer):
    """The local embedding model behind ``POST /v1/embeddings`` on ``<data_dir>/embeddings/embeddings.sock``.

    ``start()`` returns the socket's path. The options apply when this process is the one that starts the
    service; an attaching process uses the running service as it is (``status()`` shows its settings).
    """

    name = "embedding service"

    # No supervisor or reaper hooks (``_running``, ``_server_pid``, ``_holders_file`` keep their defaults), on
    # purpose. A reaper would duplicate the service's own holder check (``_abandoned``: it exits within
    # HOLDER_CHECK_SECONDS of its last holder's death, whoever started it). A supervisor would restart a
    # killed service only moments before a client does: every client's failed request re-attaches, which
    # restarts it, and nothing is lost meanwhile (writes never wait for the model; the embedding queue
    # retries). A restart that fails must leave that client on its in-process fallback, which only the
    # request path can do. Measured by tests/faults (the service SIGKILLed under load: every event
    # embedded again ~2-3 s later).

    def __init__(
        self,
        data_dir: Path,
        *,
        model: str = "all-MiniLM-L6-v2",
        threads: int | None = None,
        batch_size: int = 32,
        batch_wait: float = 0.0,
    ) -> None:
        super().__init__(data_dir)
        self.dir = self.home = self.data_dir / "embeddings"
        self.lock_path = self.dir / "start.lock"
        self.log_path = self.dir / "service.log"
        # Not ``_holders``: the service has no reaper (see above); it checks its holders itself.
        self._holders_at = HoldersFile(self.dir / "holders")
        self._pid_path = self.dir / "service.pid"
        preferred = self.dir / "embeddings.sock"
        self.socket_path = (
            preferred
            if socket_path_fits(preferred)
            else Path("/tmp") / f"msm-embed-{path_hash(self.dir)}" / "embeddings.sock"
        )
        self._options = {"model": model, "threads": threads, "batch-size": batch_size, "batch-wait": batch_wait}

    # -- holders (as EmbeddedPostgres: a shared flock each) ------------------------------------------------

    def _holds(self) -> bool:
        return self._holders_at.held

    def _hold(self) -> None:
        self._holders_at.hold()

    def _drop_hold(self) -> None:
        self._holders_at.drop()

    def _leave(self) -> bool:
        self._drop_hold()
        return self._holders_at.none_left()

    # -- start -------------------------------------------------------------------------------------------

    def _ensure_running(self) -> tuple[StartMode, str]:
        for path in (self.log_path, self._pid_path, self._holders_at.path):
            refuse_symlink(path)
        if self.socket_path.parent != self.dir:
            private_dir(self.socket_path.parent, os.geteuid(), os.getegid())
        if probe(self.socket_path) in ("up", "busy"):
            return "attach", str(self.socket_path)
        self._stop_orphan()
        for stale in (self.socket_path, self._pid_path):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        self._spawn()
        return "start", str(self.socket_path)

    def _spawn(self) -> None:
        args = [sys.executable, "-m", __name__, "--dir", str(self.dir), "--socket", str(self.socket_path)]
        for option, value in self._options.items():
            if value is not None:
                args += [f"--{option}", str(value)]
        with open(open_nofollow(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as logf:
            logf.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: start\n".encode())
            logf.flush()
            try:
                proc = subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=self.dir, env=_child_env(),
                    start_new_session=True, close_fds=True,
                )  # fmt: skip
            except OSError as exc:
                raise StoreUnavailable(f"cannot run the {self.name} ({exc.strerror}); see {self.log_path}") from None
        fd = open_nofollow(self._pid_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with open(fd, "w") as f:
            f.write(f"{proc.pid}\n")
        deadline = time.monotonic() + SERVICE_START_TIMEOUT
        while probe(self.socket_path) != "up":
            if proc.poll() is not None or time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
                log.error("the %s did not come up; end of %s:\n%s", self.name, self.log_path, log_tail(self.log_path))
                raise StoreUnavailable(f"the {self.name} did not start; see {self.log_path}")
            time.sleep(0.01)
        # Reap it when it exits while we still run (a zombie would count as alive to other tools).
        threading.Thread(target=proc.wait, name="embedding-service-reaper", daemon=True).start()

    def _recorded_pid(self) -> int | None:
        try:
            with open(os.open(self._pid_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                return int(f.read(32).strip())
        except (OSError, ValueError):
            return None

    def _service_process(self) -> psutil.Process | None:
        pid = self._recorded_pid()
        try:
            return None if pid is None else process_in(pid, self.dir)
        except psutil.AccessDenied:
            raise ConfigError(
                f"an embedding service (pid {pid}) of another user runs in {self.dir}; stop it or set MSM_DATA_DIR"
            ) from None

    def _stop_orphan(self) -> None:
        """Stop a service that still runs although its socket is gone or refuses connections."""
        proc = self._service_process()
        if proc is not None:
            log.warning("stopping an unreachable %s (pid %d) in %s", self.name, proc.pid, self.dir)
            _terminate(proc)

    # -- stop --------------------------------------------------------------------------------------------

    def _stop(self) -> None:
        proc = self._service_process()
        if proc is not None:
            _terminate(proc)
            log.info("%s stopped (%s)", self.name, self.socket_path)
        for stale in (self.socket_path, self._pid_path):  # a killed service leaves them behind
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()

    # -- status ------------------------------------------------------------------------------------------

    def holder_pids(self) -> list[int] | None:
        """Processes holding the service now (Linux: from /proc/locks), or None where that is unknown."""
        return _flock_holders(self._holders_at.path)

    def status(self) -> dict[str, Any]:
        """What a ``doctor`` shows: whether it runs, its pid, socket, model, settings, holders, counters."""
        info: dict[str, Any] = {
            "running": False,
            "socket": str(self.socket_path),
            "log": str(self.log_path),
            "holders": self.holder_pids(),
        }
        try:
            code, body = http_get(self.socket_path, "/status", timeout=2.0)
            if code == 200:
                info.update(json.loads(body), running=True)
        except (OSError, ValueError):
            pass
        return info


def service_status(data_dir: Path) -> dict[str, Any]:
    """The embedding service of ``data_dir``: see ``EmbeddedEmbeddingService.status``."""
    return EmbeddedEmbeddingService(data_dir).status()


def _child_env() -> dict[str, str]:
    """Our environment, with this package importable from the service's working directory (a source
    checkout on ``sys.path`` only through the starter's working directory, too)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _terminate(proc: psutil.Process) -> None:
    with contextlib.suppress(psutil.NoSuchProcess):
        proc.terminate()
        if not wait_until(lambda: not pid_alive(proc.pid), timeout=SERVICE_STOP_TIMEOUT, interval=0.01):
            log.warning("the embedding service (pid %d) did not stop within %.0f s: killing it", proc.pid, 10)
            proc.kill()
            wait_until(lambda: not pid_alive(proc.pid), timeout=5, interval=0.01)


def _flock_holders(path: Path) -> list[int] | None:
    try:
        st = path.stat()
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return [] if Path("/proc/locks").exists() else None
    except OSError:
        return None
    key = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  READ  1234 08:01:5678 0 EOF"; waiters are marked "->"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "READ" and fields[5] == key:
            pids.add(int(fields[4]))
    return sorted(pids)


# -- the service process ------------------------------------------------------------------------------


def _abandoned(service_dir: Path, socket_path: Path, inode: int) -> bool:
    """In the service: no holder left and no start under way (or our socket was replaced): unpublish, exit."""
    if not _is_our_socket(socket_path, inode):
        return True
    lock = open_nofollow(service_dir / "start.lock", os.O_RDWR | os.O_CREAT)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # a process is starting, attaching or releasing: look again later
        if not HoldersFile(service_dir / "holders").none_left():
            return False
        _unpublish(service_dir, socket_path, inode)  # under the lock: the next start finds no service
        return True
    finally:
        os.close(lock)


def _is_our_socket(socket_path: Path, inode: int) -> bool:
    try:
        return socket_path.lstat().st_ino == inode
    except FileNotFoundError:
        return False


def _unpublish(service_dir: Path, socket_path: Path, inode: int) -> None:
    if _is_our_socket(socket_path, inode):
        socket_path.unlink()
    pid_path = service_dir / "service.pid"
    with contextlib.suppress(OSError, ValueError):
        if int(pid_path.read_text().strip()) == os.getpid():
            pid_path.unlink()


async def _serve(args: argparse.Namespace) -> None:
    from ..embeddings.local import OnnxEmbedder
    from ..embeddings.service_app import ServiceConfig, bind_unix, create_app, serve

    if args.model != OnnxEmbedder.model_id:
        raise SystemExit(f"unknown model {args.model!r}; this service runs {OnnxEmbedder.model_id}")
    threads = args.threads or os.cpu_count() or 1
    config = ServiceConfig(threads=threads, batch_size=args.batch_size, batch_wait=args.batch_wait)
    async with OnnxEmbedder(
        batch_size=config.batch_size, batch_wait=config.batch_wait, threads=config.threads
    ) as model:
        await model.embed("warm-up")  # the first run allocates; pay it before the first client does
        sock = bind_unix(str(args.socket))
        inode = args.socket.lstat().st_ino
        log.info(
            "serving %s on %s (threads %d, batch %d)", model.model_id, args.socket, config.threads, config.batch_size
        )
        try:
            abandoned = functools.partial(_abandoned, args.dir, args.socket, inode)
            await serve(sock, create_app(model, config), should_exit=abandoned, check_every=HOLDER_CHECK_SECONDS)
        finally:
            sock.close()
            _unpublish(args.dir, args.socket, inode)
    log.info("stopped")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="embedding service", description="Started by EmbeddedEmbeddingService.")
    parser.add_argument("--dir", type=Path, required=True, help="the service directory (start.lock, holders)")
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--model", default="all-MiniLM-L6-v2")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batch-wait", type=float, default=0.002, help="seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s embedding service [%(process)d] %(message)s"
    )
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
