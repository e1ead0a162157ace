"""Fixtures the runs tests share."""

from __future__ import annotations

import pytest

from runs.models import Checkpoint, Run, RunStatus
from tests.runs.factories import tiny_run


@pytest.fixture
def checkpointed(seeded, operator, settings, tmp_path):
    """A finished tiny run with one checkpoint on disk under a temporary runs directory."""
    settings.RUNS_DIR = tmp_path / "runs"
    run = tiny_run(owner=operator, name="served")
    folder = settings.RUNS_DIR / f"run-{run.pk}" / "checkpoints" / "step_000004"
    folder.mkdir(parents=True)
    Run.objects.filter(pk=run.pk).update(run_dir=str(folder.parent.parent), status=RunStatus.SUCCEEDED)
    Checkpoint.objects.create(run=run, step=4, tag=folder.name, path=str(folder), metrics={"loss": 7.25})
    return Run.objects.get(pk=run.pk)
