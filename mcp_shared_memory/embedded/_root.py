"""What only root needs: the servers run as unprivileged system users, with their files where those can reach.

PostgreSQL refuses to run as root, and Valkey should not: as root, PostgreSQL runs as ``embedded_postgres``
and Valkey as ``embedded_valkey`` (created with ``useradd`` if missing). The data dir (``/root/...`` by
default) stays private and no directory above it is touched: what those users need lives in a service
directory ``/var/lib/mcp-shared-memory/<hash of the data dir>`` (root-owned, 0711; ``/tmp/msm-root`` when
``/var/lib`` is read-only), recorded in ``<data_dir>/service-dir`` so that a moved data dir keeps its data.
Programs installed where those users cannot reach them (e.g. under ``/root/.pyenv``) are run from a
root-owned copy in the service base.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from ..errors import ConfigError
from ._common import RunAs, open_nofollow, path_hash, refuse_symlink, safe_dir

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"
VALKEY_SYSTEM_USER = "embedded_valkey"
SERVICE_BASES = (Path("/var/lib/mcp-shared-memory"), Path("/tmp/msm-root"))
REFERENCE = "service-dir"  # in the data dir: the path of its service directory
_BASE_MODE = 0o711  # the system users traverse it; nobody lists it


# ---------------------------------------------------------------------------------------------------------
# the service directory


def service_dir(data_dir: Path) -> Path:
    """Where the data dir's server files live as root (recorded path, or the default one); no side effects."""
    recorded = _read_reference(data_dir / REFERENCE)
    if recorded is not None:
        return recorded
    return _default_base() / path_hash(data_dir)


def prepare_service_dir(data_dir: Path) -> Path:
    """Create (or check) the service directory of ``data_dir`` and record it there."""
    svc = service_dir(data_dir)
    safe_dir(svc.parent, uid=0, gid=0, mode=_BASE_MODE, what="service base of the embedded servers")
    safe_dir(svc, uid=0, gid=0, mode=_BASE_MODE, what=f"service directory of the data dir {data_dir}")
    reference = data_dir / REFERENCE
    if _read_reference(reference) != svc:
        tmp = reference.with_name(f".{REFERENCE}.{os.getpid()}.{threading.get_ident()}")
        with open(open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w") as f:
            f.write(f"{svc}\n")
        os.replace(tmp, reference)
    return svc


def _default_base() -> Path:
    for base in SERVICE_BASES:
        if base.exists() or os.access(base.parent, os.W_OK):
            return base
    raise ConfigError(
        f"running as root, the embedded servers need {SERVICE_BASES[0]} or {SERVICE_BASES[1]} and neither can "
        "be created; run as an ordinary user, or set MSM_DATABASE_URL and MSM_REDIS_URL"
    )


def _read_reference(path: Path) -> Path | None:
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)) as f:
            text = f.read(4096).strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path} ({exc.strerror}); remove it") from None
    recorded = Path(text)
    if recorded.parent not in SERVICE_BASES or len(recorded.name) != 12 or not _is_hex(recorded.name):
        raise ConfigError(f"{path} does not name a service directory of the embedded servers; remove it")
    return recorded


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


# ---------------------------------------------------------------------------------------------------------
# system users


def ensure_system_user(name: str) -> RunAs:
    for attempt in range(5):
        try:
            entry = pwd.getpwnam(name)
            return RunAs(entry.pw_uid, entry.pw_gid, name)
        except KeyError:
            pass
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        shell = next((s for s in ("/usr/sbin/nologin", "/sbin/nologin") if Path(s).exists()), "/bin/false")
        cmd = [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent"]
        try:
            done = subprocess.run(
                [*cmd, "--shell", shell, name],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigError(
                f"running as root, the embedded servers need the system user {name!r} and `useradd` "
                f"failed ({exc}); create the user, run as an ordinary user, or set MSM_DATABASE_URL"
            ) from None
        if done.returncode == 0:
            log.info("created the system user %r for the embedded servers", name)
        elif attempt == 4:
            raise ConfigError(
                f"running as root, the embedded servers need the system user {name!r}; `useradd` failed: "
                f"{done.stderr.strip()}. Create the user, run as an ordinary user, or set MSM_DATABASE_URL"
            )
        else:
            time.sleep(0.1 * (attempt + 1))  # another process may hold /etc/passwd's lock
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------------------
# programs the system users run


def can_use(path: Path, who: RunAs) -> bool:
    """Whether ``who`` can traverse every directory down to ``path`` and read it (and run it, when a program)."""
    gids = set(os.getgrouplist(pwd.getpwuid(who.uid).pw_name, who.gid))

    def allows(st: os.stat_result, rwx: int) -> bool:  # rwx: 0o7-style bits for "other"
        if st.st_uid == who.uid:
            return st.st_mode & (rwx << 6) == rwx << 6
        if st.st_gid in gids:
            return st.st_mode & (rwx << 3) == rwx << 3
        return st.st_mode & rwx == rwx

    try:
        if not all(allows(d.stat(), 0o1) for d in path.parents):
            return False
        st = path.stat()
    except OSError:
        return False
    runs = stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111
    return allows(st, 0o5 if runs else 0o4)


def runnable(path: Path, who: RunAs, *, probes: list[Path]) -> Path:
    """``path`` (a program, or a tree of them) if ``who`` can use it, else a root-owned copy it can use.

    ``probes`` are files (in ``path``) that must be readable and runnable. Nothing in the installation
    or above it is changed; the copy is keyed by the installation's path and its probes' size and mtime.
    """
    probes = [p for p in probes if p.exists()]
    if all(can_use(p, who) for p in [path, *probes]):
        return path
    key = hashlib.sha256(os.fsencode(path))
    for p in probes:
        st = p.stat()
        key.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    base = _default_base()
    safe_dir(base, uid=0, gid=0, mode=_BASE_MODE, what="service base of the embedded servers")
    copy = base / f"{path.name}-{key.hexdigest()[:12]}"
    if copy.exists():
        safe_dir(copy, uid=0, gid=0, mode=0o755, what=f"copy of {path}")
        return copy
    log.warning("%s cannot be reached by the %s user; running a copy in %s", path, who.name, copy)
    scratch = Path(tempfile.mkdtemp(prefix=".copy-", dir=base))
    try:
        if path.is_dir():
            shutil.copytree(path, scratch / "t", symlinks=True)
        else:
            (scratch / "t").mkdir()
            shutil.copy2(path, scratch / "t" / path.name)
        _make_public(scratch / "t")
        try:
            os.rename(scratch / "t", copy)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # else another process made it first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return copy


def _make_public(root: Path) -> None:
    """Directories 0755, files 0644 (0755 when executable), all owned by root."""
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        os.chown(d, 0, 0)
        d.chmod(0o755)
        for name in filenames:
            f = d / name
            st = f.lstat()
            if stat.S_ISREG(st.st_mode):
                os.chown(f, 0, 0)
                f.chmod(0o755 if st.st_mode & 0o100 else 0o644)


# ---------------------------------------------------------------------------------------------------------
# ownership


def give_tree(path: Path, who: RunAs) -> None:
    """Make ``who`` the owner of ``path`` and everything below it (links themselves, never their targets)."""
    log.warning("giving %s to the %s user", path, who.name)
    os.lchown(path, who.uid, who.gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), who.uid, who.gid)


def move_legacy(old: Path, new: Path, who: RunAs) -> None:
    """Move data an older version kept in the data dir into the service directory, owned by ``who``."""
    refuse_symlink(old)
    log.warning("moving %s to %s (where the %s user can reach it)", old, new, who.name)
    shutil.move(old, new)
    give_tree(new, who)
