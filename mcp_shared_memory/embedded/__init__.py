"""Zero-config backends: PostgreSQL 18 + pgvector and Valkey in a data dir, shared by every local process.

Layout of ``data_dir``::

    pg/                  PGDATA (PostgreSQL 18 only: data dirs are tied to the major version)
    postgres.log         initdb + server output
    postgres.lock        exclusive flock around start/stop
    postgres.holders     every holder keeps a shared flock on it; the kernel drops it when a holder dies
    valkey/              AOF, valkey.log, valkey.pid, valkey.sock, start.lock
    service-dir          as root only: where pg/ and valkey/ (but its start.lock) are instead

The first process to call ``start()`` starts the server, later ones attach; the last holder to
``release()`` (or to exit) stops it. Holders that die without releasing (SIGKILL, OOM) stop counting:
PostgreSQL holders by their flock, Valkey holders by their flock and named client connection. Every holder
restarts a server that died (the first to notice wins the start lock; the others attach), and a detached
reaper started with each server stops it once every holder died without releasing it.

The data dir must belong to the current user and be writable by nobody else; logs, locks and sockets
that are symbolic links are refused.

As root, PostgreSQL runs as the system user ``embedded_postgres`` and Valkey as ``embedded_valkey`` (created
with ``useradd`` if missing). No permission above the data dir is changed: ``pg/`` and ``valkey/`` (except its
start lock) live in ``/var/lib/mcp-shared-memory/<hash>/`` (root-owned 0711; ``/tmp/msm-root`` when /var/lib is
read-only), recorded in ``<data_dir>/service-dir``; programs installed where those users cannot reach them
run from a root-owned copy there. As an ordinary user, everything runs as that user (the library default).
Deleting a data dir as root leaves its service directory behind: use ``remove_data_dir()``.

Unix socket paths are limited to 107 bytes (103 on macOS): when ``<data_dir>/pg/.s.PGSQL.5432`` or
``<data_dir>/valkey/valkey.sock`` is longer, the socket goes to ``/tmp/msm-pg-<hash>`` /
``/tmp/msm-valkey-<hash>`` (a 0700 directory; the hash is of the data dir's path).

A data dir must not be shared between hosts or containers: the locks and liveness checks are local.

The library installs no signal handlers. A program holding these servers calls
``install_exit_signal_handlers()`` once from its main thread, so that SIGTERM/SIGHUP run ``release()``
(through atexit) instead of leaving the servers running after their last holder.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _root
from ._signals import install_exit_signal_handlers

if TYPE_CHECKING:
    from .postgres import EmbeddedPostgres
    from .valkey import EmbeddedValkey

__all__ = [
    "EmbeddedBackends",
    "EmbeddedPostgres",
    "EmbeddedValkey",
    "install_exit_signal_handlers",
    "remove_data_dir",
    "start_embedded",
]


def __getattr__(name: str) -> Any:
    # The servers' modules load redis-py (~0.1 s): not before a command needs them, so that a stdio server
    # can install its signal handlers and answer its first requests first.
    if name == "EmbeddedPostgres":
        from .postgres import EmbeddedPostgres

        return EmbeddedPostgres
    if name == "EmbeddedValkey":
        from .valkey import EmbeddedValkey

        return EmbeddedValkey
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------
# both


@dataclass
class EmbeddedBackends:
    """URLs of the embedded servers this process holds (None where an external one is configured).
    ``database_url`` logs in as the tables' owner (a superuser), ``app_database_url`` as the role requests
    are served as, under row-level security."""

    database_url: str | None
    redis_url: str | None
    app_database_url: str | None = None
    postgres: EmbeddedPostgres | None = field(default=None, repr=False)
    valkey: EmbeddedValkey | None = field(default=None, repr=False)

    def release(self) -> None:
        """Release both servers (idempotent)."""
        if self.valkey is not None:
            self.valkey.release()
        if self.postgres is not None:
            self.postgres.release()


def start_embedded(data_dir: Path, *, postgres: bool, redis: bool) -> EmbeddedBackends:
    """Start (or attach to) the embedded servers asked for; blocking. Release with ``.release()``."""
    backends = EmbeddedBackends(None, None)
    try:
        if postgres:
            from .postgres import EmbeddedPostgres

            backends.postgres = EmbeddedPostgres(data_dir)
            backends.database_url = backends.postgres.start()
            backends.app_database_url = backends.postgres.app_url
        if redis:
            from .valkey import EmbeddedValkey

            backends.valkey = EmbeddedValkey(data_dir)
            backends.redis_url = backends.valkey.start()
    except BaseException:
        backends.release()
        raise
    return backends


def remove_data_dir(data_dir: Path) -> None:
    """Delete a data dir and, as root, its service directory (for throwaway data dirs; servers stopped)."""
    data_dir = Path(data_dir).expanduser().resolve()
    if os.geteuid() == 0 and (data_dir / _root.REFERENCE).exists():
        shutil.rmtree(_root.service_dir(data_dir), ignore_errors=True)
    shutil.rmtree(data_dir, ignore_errors=True)
