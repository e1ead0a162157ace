"""Checkpoint retention (keep the last N plus every Mth step) and starting a run from a checkpoint."""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Any

from django.db import transaction
from django.utils import timezone

from runs.models import Artifact, AttemptCause, Checkpoint, JobPhase, Run, Trainer
from runs.services.artifacts import ServingRefused
from runs.services.attempts import AttemptRefused, run_relaunch
from runs.services.audit import audit_record
from runs.services.paths import inside_run
from runs.services.rundir import run_dir_path
from runs.services.transitions import IllegalTransition


def retention_policy(run: Run) -> tuple[int, int]:
    """(keep_last, keep_every) from the run's config; keep_every 0 keeps no extra checkpoints."""
    training = (run.config or {}).get("training", {})
    return int(training.get("keep_checkpoints") or 3), int(training.get("keep_every") or 0)


def retention_kept(steps: list[int], *, keep_last: int, keep_every: int) -> set[int]:
    """The same rule as jobs/train/checkpoint.py applies while the job runs."""
    kept = set(sorted(steps)[-keep_last:]) if keep_last > 0 else set()
    if keep_every > 0:
        kept |= {s for s in steps if s % keep_every == 0}
    return kept


def _delete_folder(path: str, run: Run) -> None:
    # Only a folder inside the checkpoint's own run directory (symlinks resolved) is retention's to delete: a path
    # a job reported is never trusted to name another run's files, or the run directory itself.
    if not path or not inside_run(path, run=run):
        return
    folder = Path(os.path.realpath(path))
    if folder.is_dir() and folder != Path(os.path.realpath(run_dir_path(run))):
        shutil.rmtree(folder, ignore_errors=True)


def checkpoint_retention_apply(*, run: Run, actor: Any, keep_last: int | None = None,
                               keep_every: int | None = None) -> list[Checkpoint]:  # fmt: skip
    """Set the policy (when given) and prune what it does not keep; returns the pruned checkpoints.

    A checkpoint an artifact is being made from right now is kept until that job ends.
    """
    for field, value, low in (("keep_last", keep_last, 1), ("keep_every", keep_every, 0)):
        if value is not None and (not isinstance(value, int) or value < low or value > 1_000_000):
            raise ServingRefused(field, f"{field} must be a whole number from {low} to 1,000,000.")
    with transaction.atomic():
        run = Run.objects.select_for_update().get(pk=run.pk)
        old = retention_policy(run)
        new = (keep_last if keep_last is not None else old[0], keep_every if keep_every is not None else old[1])
        if new != old:
            config = dict(run.config)
            config["training"] = {**config.get("training", {}), "keep_checkpoints": new[0], "keep_every": new[1]}
            Run.objects.filter(pk=run.pk).update(config=config)
            run.config = config
            audit_record(
                actor=actor,
                action="checkpoint.retention",
                obj=run,
                message=f"keep the last {new[0]} plus every {new[1] or 'no'} step multiple",
                diff={"training.keep_checkpoints": [old[0], new[0]], "training.keep_every": [old[1], new[1]]},
            )
        live = Checkpoint.objects.filter(run=run, pruned_at__isnull=True)
        kept = retention_kept(list(live.values_list("step", flat=True)), keep_last=new[0], keep_every=new[1])
        busy = set(
            Artifact.objects.filter(run=run, status__in=[JobPhase.QUEUED, JobPhase.RUNNING]).values_list(
                "checkpoint_id", flat=True
            )
        )
        pruned = [c for c in live.exclude(step__in=kept) if c.pk not in busy]
        now = timezone.now()
        for checkpoint in pruned:
            Checkpoint.objects.filter(pk=checkpoint.pk).update(pruned_at=now)
            audit_record(
                actor=actor,
                action="checkpoint.pruned",
                obj=checkpoint,
                run_id=run.pk,
                message=f"{checkpoint.tag} removed by retention (keep last {new[0]}, every {new[1] or '-'})",
            )
            transaction.on_commit(functools.partial(_delete_folder, checkpoint.path, run))
    return pruned


def _check_resumable(run: Run, checkpoint: Checkpoint) -> None:
    parent = checkpoint.run
    if not inside_run(checkpoint.path or "", run=parent):
        raise ServingRefused(
            "checkpoint", f"Checkpoint {checkpoint.tag}'s files are not inside run {parent.pk}'s directory."
        )
    if checkpoint.pruned_at is not None or not Path(checkpoint.path or "").is_dir():
        raise ServingRefused("checkpoint", f"Checkpoint {checkpoint.tag} is no longer on disk.")
    if run.trainer != Trainer.REFERENCE or parent.trainer != Trainer.REFERENCE:
        raise ServingRefused("checkpoint", "Only the reference trainer resumes from a checkpoint.")
    if run.config.get("model") != parent.config.get("model"):
        raise ServingRefused(
            "model", "A run started from a checkpoint keeps the model's shape; undo the model changes."
        )
    world = run.cluster.nodes * run.cluster.gpus_per_node
    parent_world = parent.cluster.nodes * parent.cluster.gpus_per_node
    if world != parent_world:
        raise ServingRefused(
            "cluster",
            f"The checkpoint was written by {parent_world} ranks and this cluster runs {world}; the data sampler's "
            "per-rank positions cannot be remapped. Pick a cluster with the same number of ranks.",
        )


def run_start_from(*, run: Run, checkpoint: Checkpoint, actor: Any) -> Run:
    """Make a draft run start from `checkpoint` (a fork from the checkpoints page)."""
    _check_resumable(run, checkpoint)
    with transaction.atomic():
        Run.objects.filter(pk=run.pk).update(resume_from=checkpoint.path)
        audit_record(
            actor=actor,
            action="run.start_from",
            obj=run,
            message=f"starts from run {checkpoint.run_id} {checkpoint.tag}",
            diff={"resume_from": [run.resume_from, checkpoint.path]},
        )
    run.refresh_from_db()
    return run


def checkpoint_resume(*, checkpoint: Checkpoint, actor: Any) -> Run:
    """Resume: the run's next attempt, same config, starting from this checkpoint, queued at once (the same run,
    not a fork: its curve and timeline go on)."""
    run = checkpoint.run
    _check_resumable(run, checkpoint)
    if not run.is_terminal:
        raise ServingRefused(
            "checkpoint", f"Run #{run.pk} is {run.status}; cancel it before resuming it from a checkpoint."
        )
    try:
        run_relaunch(
            run=run,
            cause=AttemptCause.RESUME,
            actor=actor,
            checkpoint_path=checkpoint.path,
            checkpoint_step=checkpoint.step,
            reason=f"resumed from {checkpoint.tag}",
        )
    except (AttemptRefused, IllegalTransition) as exc:
        raise ServingRefused("checkpoint", str(exc)) from None
    run.refresh_from_db()
    return run
