"""Malformed environment values stop start-up with a message that names the variable and the fix."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _start(env_overrides: dict[str, str], tmp_path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({"CP_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "controlplane.settings", **env_overrides})
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"DATABASE_URL": "mysql://root@localhost/x"}, "DATABASE_URL has scheme 'mysql'"),
        ({"DATABASE_URL": "postgres://u@localhost:5432"}, "names no database"),
        ({"REDIS_URL": "http://localhost:6379"}, "REDIS_URL has scheme 'http'"),
        ({"REDIS_URL": "redis://localhost:notaport/0"}, "malformed port"),
        ({"CP_DEBUG": "maybe"}, "CP_DEBUG='maybe' is not a boolean"),
        ({"CP_WEB_WORKERS": "two"}, "CP_WEB_WORKERS='two' is not an integer"),
        ({"CP_WEB_WORKERS": "0"}, "CP_WEB_WORKERS=0 must be at least 1"),
        ({"CP_INGEST_THREADS": "-1"}, "CP_INGEST_THREADS=-1 must be at least 1"),
    ],
)
def test_malformed_values_fail_at_start_up(env, expected, tmp_path):
    result = _start(env, tmp_path)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "ImproperlyConfigured" in result.stderr


def test_no_environment_means_sqlite_and_embedded_redis(tmp_path):
    code = (
        "import django; django.setup(); from django.conf import settings as s; "
        "print(s.DATABASES['default']['ENGINE'], s.EMBEDDED_REDIS, s.CELERY_BROKER_URL)"
    )
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    env.update({"CP_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "controlplane.settings"})
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    engine, embedded, broker = out.stdout.split()
    assert engine.endswith("sqlite3") and embedded == "True" and broker == f"redis+socket://{tmp_path}/redis.sock"


def test_embedded_redis_starts_and_stops_cleanly(tmp_path):
    import redis

    from controlplane import embedded_redis

    sock = str(tmp_path / "r.sock")
    proc = embedded_redis.start(sock, workdir=str(tmp_path))
    client = redis.Redis(unix_socket_path=sock)
    client.set("k", "v")
    assert client.get("k") == b"v"
    embedded_redis.stop(proc, sock)
    assert proc.poll() is not None
    assert not os.path.exists(sock) or not _answers(sock)


def _answers(sock: str) -> bool:
    import redis

    try:
        return bool(redis.Redis(unix_socket_path=sock).ping())
    except (redis.ConnectionError, FileNotFoundError):
        return False
