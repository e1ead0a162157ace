"""The run directory a job reads and writes (docs/run-config.md): frozen config, token, reporter settings."""

from __future__ import annotations

import json
import os
from pathlib import Path

from django.conf import settings

from runs.models import Run
from runs.services.tokens import run_token_issue


def run_dir_path(run: Run) -> Path:
    return Path(settings.RUNS_DIR) / f"run-{run.pk}"


def run_json(run: Run) -> dict:
    cfg = json.loads(json.dumps(run.config))
    cfg["run"] = {**cfg.get("run", {}), "id": run.pk, "name": run.name, "attempt": run.attempt, "trainer": run.trainer}
    cfg["reporter"] = {
        "ingest_url": f"{settings.CP_BASE_URL.rstrip('/')}/api/v1/ingest/{run.pk}/",
        "every_n_steps": 1,
        "batch_size": 50,
        "flush_interval_s": 1.0,
    }
    return cfg


def run_dir_prepare(*, run: Run) -> Path:
    """Write run.json and a fresh ingest token (mode 0600). Safe to repeat: a relaunch gets a new token."""
    path = run_dir_path(run)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / "run.json.tmp"
    tmp.write_text(json.dumps(run_json(run), indent=2))
    os.replace(tmp, path / "run.json")
    token = run_token_issue(run=run)
    token_path = path / "token"
    fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return path
