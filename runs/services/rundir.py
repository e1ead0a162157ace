"""The run directory a job reads and writes (docs/run-config.md): frozen config, token, reporter settings."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings

from jobs.common.atomic import write_atomic
from runs.models import Attempt, Run, TokenKind
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
        # The machine's figures (CPU, memory, network, GPUs) every 10 s, and each step's wall time for the charts.
        "system_metrics_s": 10.0,
        "wall_time": True,
    }
    return cfg


def run_dir_prepare(*, run: Run, attempt: Attempt | None = None) -> Path:
    """Write run.json and a fresh job token for the run's current attempt (mode 0600), which retires the previous
    attempt's. Safe to repeat: a relaunch gets a new token."""
    path = run_dir_path(run)
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)  # the run's job (its own user, workers.backends.jobuser) and the control plane only
    write_atomic(path / "run.json", json.dumps(run_json(run), indent=2))
    write_atomic(
        path / "token",
        run_token_issue(run=run, kind=TokenKind.JOB, actor="system", job_attempt=attempt).secret,
        mode=0o600,
    )
    return path
