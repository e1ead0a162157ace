"""var/ is the control plane's alone: 0700 folders, 0600 secret key and database, from a fresh start and after an
upgrade of an install whose var/ was left readable."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# Django set up on SQLite in `var_dir`, and a connection opened (which creates the database file).
START = "import django; django.setup(); from django.db import connection; connection.ensure_connection()"


def _start(var_dir: Path, **extra: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "CP_SECRET_KEY")}
    env.update({"CP_VAR_DIR": str(var_dir), "DJANGO_SETTINGS_MODULE": "controlplane.settings", **extra})
    subprocess.run([sys.executable, "-c", START], cwd=ROOT, env=env, check=True, timeout=120)


def _mode(path: Path) -> str:
    return oct(stat.S_IMODE(path.stat().st_mode))


def test_a_fresh_install_creates_var_private(tmp_path):
    var_dir = tmp_path / "var"
    old = os.umask(0o022)
    try:
        _start(var_dir)
    finally:
        os.umask(old)
    assert _mode(var_dir) == "0o700"
    assert _mode(var_dir / "runs") == "0o700"
    assert _mode(var_dir / "secret_key") == "0o600"
    assert _mode(var_dir / "controlplane.sqlite3") == "0o600"


def test_an_upgrade_corrects_a_readable_var(tmp_path):
    var_dir = tmp_path / "var"
    (var_dir / "runs").mkdir(parents=True)
    var_dir.chmod(0o755)
    (var_dir / "runs").chmod(0o755)
    for name in ("secret_key", "controlplane.sqlite3", "redis.log"):
        (var_dir / name).write_text("x" * 60 if name == "secret_key" else "")
        (var_dir / name).chmod(0o644)
    (var_dir / "controlplane.sqlite3").unlink()  # SQLite creates it again, and it must come out 0600 as well
    outside = tmp_path / "not-ours"
    outside.write_text("")
    outside.chmod(0o644)
    (var_dir / "audit_key").symlink_to(outside)  # a link is never followed out of var/
    _start(var_dir)
    assert _mode(var_dir) == "0o700" and _mode(var_dir / "runs") == "0o700"
    for name in ("secret_key", "controlplane.sqlite3", "redis.log"):
        assert _mode(var_dir / name) == "0o600", name
    assert _mode(outside) == "0o644"


def test_with_job_users_var_only_lets_their_group_pass(tmp_path):
    var_dir = tmp_path / "var"
    _start(var_dir, CP_JOB_UIDS="232000-232999")
    if os.geteuid() == 0:
        assert _mode(var_dir) == "0o710" and var_dir.stat().st_gid == 232000
        assert _mode(var_dir / "runs") == "0o710"
    assert _mode(var_dir / "secret_key") == "0o600"
