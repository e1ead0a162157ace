"""CP_PROFILE=production: `manage.py check --deploy` is clean, and a page carries HSTS, a content security policy
with a nonce, and Secure cookies; the default development profile stays plain http."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PAGE = """
import json, django
django.setup()
from django.test import Client
page = Client().get("/accounts/login/", secure=True, headers={"host": "cp.example.com"})
plain = Client().get("/accounts/login/", headers={"host": "cp.example.com"})
print(json.dumps({"status": page.status_code, "headers": dict(page.headers), "plain": plain.status_code,
                  "location": plain.headers.get("Location", ""), "cookies": {k: dict(v) for k, v in page.cookies.items()}}))
"""


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "CP_DEBUG", "DJANGO_ALLOW_ASYNC_UNSAFE")}
    env.update({"CP_VAR_DIR": str(tmp_path / "var"), "CP_ALLOWED_HOSTS": "cp.example.com", **extra})
    env["DJANGO_SETTINGS_MODULE"] = "controlplane.settings"
    return env


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean_under_the_production_profile(tmp_path):
    done = _check_deploy(_env(tmp_path, CP_PROFILE="production"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_the_development_profile_is_what_check_deploy_warns_about(tmp_path):
    done = _check_deploy(_env(tmp_path))
    assert done.returncode != 0
    for warning in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert warning in done.stderr + done.stdout, warning


def test_a_production_page_carries_hsts_csp_and_secure_cookies(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", PAGE],
        cwd=ROOT,
        env=_env(tmp_path, CP_PROFILE="production"),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    page = json.loads(out.stdout.strip().splitlines()[-1])
    assert page["status"] == 200
    headers = page["headers"]
    assert headers["Strict-Transport-Security"].startswith("max-age=31536000")
    csp = headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert "script-src 'self'" in csp and "unsafe-eval" not in csp
    assert page["cookies"]["csrftoken"]["secure"] is True
    assert page["plain"] == 301 and page["location"].startswith("https://cp.example.com/")
