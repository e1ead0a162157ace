"""The control plane's private state (var/): folders 0700, secrets and the database 0600, from the first start on.

An install made before this was enforced had var/ 0755 and its SQLite file 0644 (any local user read the session
table and the secret key); every start corrects that. When local jobs run as their own users (settings.JOB_UIDS),
var/ and the runs folder let the jobs' group pass through to their run directories (0710), nothing more.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# Files under var/ that only the control plane may read or write.
SECRET_FILES = (
    "secret_key",
    "audit_key",
    "audit_anchor.log",
    "controlplane.sqlite3",
    "controlplane.sqlite3-wal",
    "controlplane.sqlite3-shm",
    "controlplane.sqlite3-journal",
    "test-controlplane.sqlite3",
    "test-controlplane.sqlite3-wal",
    "test-controlplane.sqlite3-shm",
    "test-controlplane.sqlite3-journal",
    "redis.sock",
    "redis.log",
)


def _tighten(path: Path, mode: int, *, gid: int | None = None) -> bool:
    """Set `path`'s permission bits to `mode` (and its group to `gid`) if they differ; True when changed."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        return False  # never follow a link out of var/
    changed = False
    if gid is not None and st.st_gid != gid and st.st_uid == os.geteuid():
        os.chown(path, -1, gid)
        changed = True
    if stat.S_IMODE(st.st_mode) != mode and st.st_uid == os.geteuid():
        path.chmod(mode)
        changed = True
    return changed


def secure_var(var_dir: Path, *, runs_dir: Path | None = None, job_gid: int | None = None) -> list[str]:
    """Make var/ private (see the module's doc); returns what was corrected, for the start-up log."""
    fixed = []
    folder_mode = 0o710 if job_gid is not None else 0o700
    for folder in (var_dir, runs_dir):
        if folder is not None and (folder == var_dir or var_dir in folder.parents):
            folder.mkdir(parents=True, exist_ok=True)
            if _tighten(folder, folder_mode, gid=job_gid):
                fixed.append(str(folder))
    for name in SECRET_FILES:
        if _tighten(var_dir / name, 0o600):
            fixed.append(str(var_dir / name))
    return fixed


def secure_sqlite(sender, connection, **kwargs) -> None:
    """connection_created: a SQLite database (and its journal files) 0600 as soon as it exists."""
    if connection.vendor != "sqlite":
        return
    name = str(connection.settings_dict.get("NAME") or "")
    if not name or name == ":memory:" or name.startswith("file:"):
        return
    for suffix in ("", "-wal", "-shm", "-journal"):
        _tighten(Path(name + suffix), 0o600)
