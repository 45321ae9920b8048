"""What only root needs: PostgreSQL refuses to run as root, so as root it runs as a system user.

That user is created if missing, gets search (x) permission on the directories above its data (never
read), can read the installed PostgreSQL, and owns PGDATA.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import stat
import subprocess
import time
from pathlib import Path

from ..errors import ConfigError
from ._common import RunAs

log = logging.getLogger(__name__)

PG_SYSTEM_USER = "embedded_postgres"


def system_user_for(data_dir: Path, install_root: Path) -> RunAs:
    """The system user, ready to run the PostgreSQL installed in ``install_root`` on ``data_dir``."""
    run_as = ensure_system_user(PG_SYSTEM_USER)
    grant_traverse(data_dir, run_as, own=data_dir)
    grant_traverse(install_root, run_as)
    ensure_readable_tree(install_root)
    return run_as


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
                f"running as root, the embedded PostgreSQL needs the system user {name!r} and `useradd` "
                f"failed ({exc}); create the user, run as an ordinary user, or set MSM_DATABASE_URL"
            ) from None
        if done.returncode == 0:
            log.info("created the system user %r for the embedded PostgreSQL", name)
        elif attempt == 4:
            raise ConfigError(
                f"running as root, the embedded PostgreSQL needs the system user {name!r}; `useradd` failed: "
                f"{done.stderr.strip()}. Create the user, run as an ordinary user, or set MSM_DATABASE_URL"
            )
        else:
            time.sleep(0.1 * (attempt + 1))  # another process may hold /etc/passwd's lock
    raise AssertionError("unreachable")


def grant_traverse(path: Path, who: RunAs, *, own: Path | None = None) -> None:
    """Give ``who`` search (x) permission on ``path`` and every directory above it, nothing more."""
    gids = set(os.getgrouplist(pwd.getpwuid(who.uid).pw_name, who.gid))
    for d in [path, *path.parents]:
        st = d.stat()
        if st.st_uid == who.uid:
            bit = stat.S_IXUSR
        elif st.st_gid in gids:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if st.st_mode & bit:
            continue
        try:
            os.chmod(d, stat.S_IMODE(st.st_mode) | bit)
        except OSError as exc:
            raise ConfigError(
                f"the {who.name} user (which runs the embedded PostgreSQL as root) cannot reach {d} and "
                f"chmod failed ({exc.strerror}); set MSM_DATA_DIR to a path it can traverse"
            ) from None
        level = logging.INFO if own is not None and d == own else logging.WARNING
        log.log(level, "added search permission (x) on %s so the %s user can reach its data", d, who.name)


def ensure_readable_tree(root: Path) -> None:
    """The installed PostgreSQL must be readable by the system user (pip under umask 077 makes it 0600)."""
    probes = [root / "bin" / "postgres", root / "lib" / "vector.so", root / "share" / "postgres.bki"]
    if all(p.stat().st_mode & stat.S_IROTH for p in probes if p.exists()):
        return
    log.warning("making %s readable by other users so the %s user can run it", root, PG_SYSTEM_USER)
    for dirpath, _dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        d.chmod(stat.S_IMODE(d.stat().st_mode) | 0o005)
        for name in filenames:
            st = (d / name).lstat()
            if stat.S_ISREG(st.st_mode):
                mode = stat.S_IMODE(st.st_mode)
                (d / name).chmod(mode | 0o004 | (0o001 if mode & 0o100 else 0))


def give_tree(path: Path, who: RunAs) -> None:
    """Make ``who`` the owner of ``path`` and everything below it."""
    log.warning("giving %s to the %s user", path, who.name)
    os.chown(path, who.uid, who.gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), who.uid, who.gid)
