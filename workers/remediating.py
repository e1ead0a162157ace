"""The worker's side of automatic remediation (runs.services.remediation decides; this acts on jobs and files).

- `remediate_running`: a detector raised a loss spike, NaN or hang on a running job. A hang is first confirmed
  (nothing written by the job for the hang timeout, no new step), so a slow status answer never restarts a
  healthy job; then the remediation begins and the job is stopped at once.
- `remediate_run`: after the back-off, stop whatever is left of the attempt's job, settle its metrics (everything
  in metrics.jsonl stored, then the points of steps the next attempt redoes superseded) and queue the next attempt.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from jobs.common.atomic import write_atomic
from runs.metrics.supersede import metrics_supersede
from runs.models import Run, RunStatus
from runs.services.remediation import Outcome, remediation_begin, remediation_relaunch
from workers.backends import get_backend

log = logging.getLogger(__name__)
STOP_WAIT_S = 30.0
# Findings of the ended attempt's logs that must not be read as the next attempt's.
ATTEMPT_FINDINGS = ("job_status", "oom", "last_exception", "nccl")


# A job that has not made its first step yet is starting (imports, rendezvous, loading a checkpoint), not hung,
# until this long after it started.
STARTUP_GRACE_S = 600.0
# A job that logged its finished event closes its reporter and process group; past this, it is stuck, not closing.
FINISHING_GRACE_S = 120.0


def stalled_for_s(run_dir: Path, timeout: float) -> float | None:
    """How long the job has made no progress, if that is past its limit: no step or heartbeat in metrics.jsonl and
    no line of output for `timeout` seconds once it has stepped in this attempt, or for STARTUP_GRACE_S (at least
    `timeout`) since it started before that. None while it is progressing (or its files cannot be read)."""
    try:
        job_started = (run_dir / "job.json").stat().st_mtime if (run_dir / "job.json").exists() else None
        metrics = run_dir / "metrics.jsonl"
        stepped = metrics.stat().st_mtime if metrics.exists() else None
        stamps = [p.stat().st_mtime for p in (metrics, run_dir / "stdout.log") if p.exists()]
    except OSError:
        return None
    if not stamps:
        return None
    now = time.time()
    if _finishing(metrics) and now - max(stamps) < max(timeout, FINISHING_GRACE_S):
        return None
    if job_started is not None and (stepped is None or stepped < job_started):
        limit, since = max(STARTUP_GRACE_S, timeout), job_started
    else:
        limit, since = timeout, max(stamps)
    age = now - since
    return age if age >= limit else None


def _finishing(metrics: Path) -> bool:
    """Whether the job's last record says it finished training (it is closing its reporter and process group)."""
    try:
        with open(metrics, "rb") as fh:
            fh.seek(max(0, fh.seek(0, 2) - 4096))
            lines = fh.read().splitlines()
        last = json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return False
    return last.get("kind") == "event" and last.get("type") == "finished"


def hang_timeout_s(run: Run) -> float:
    return float((run.config.get("alerts") or {}).get("hang_timeout_s", 300))


def hang_confirmed(run: Run) -> bool:
    return bool(run.run_dir) and stalled_for_s(Path(run.run_dir), hang_timeout_s(run)) is not None


def stop_job(run: Run) -> bool:
    """Stop the attempt's job (every process of it) and wait until the backend says it ended; True if it did."""
    if not run.backend_job_id or not run.run_dir:
        return True
    backend = get_backend(run.cluster.backend)
    run_dir = Path(run.run_dir)
    if backend.poll(run.backend_job_id, run_dir).finished:
        return True
    backend.cancel(run.backend_job_id, run_dir)
    deadline = time.monotonic() + STOP_WAIT_S
    while time.monotonic() < deadline:
        if backend.poll(run.backend_job_id, run_dir).finished:
            return True
        time.sleep(0.2)
    return False


def settle_metrics(run: Run, *, after_step: int) -> int:
    """Store what the ended attempt wrote and was not stored yet, mark the file as fully taken (so neither the next
    attempt's reporter nor its watcher sends it again), then supersede the stored points of steps after
    `after_step`: the next attempt redoes them. Returns the points superseded."""
    from workers.watching import _ingest_metrics_file, _State

    if run.run_dir:
        run_dir = Path(run.run_dir)
        state = _State(run_dir)
        _ingest_metrics_file(run, run_dir, state)
        metrics = run_dir / "metrics.jsonl"
        if metrics.exists():
            end = metrics.stat().st_size
            write_atomic(run_dir / "metrics.acked", f"{end}\n")
            state.set_offset("metrics", end)
        for name in ("stdout.log", "stderr.log"):
            path = run_dir / name
            state.set_offset(name, path.stat().st_size if path.exists() else 0)
        for key in ATTEMPT_FINDINGS:
            state.data.pop(key, None)
        state.save()
    return metrics_supersede(run=run, after_step=after_step)


def remediate_running(run_id: int, attempt: int, kind: str, step: int | None, reason: str) -> str:
    run = Run.objects.select_related("cluster").filter(pk=run_id).first()
    if run is None or run.status != RunStatus.RUNNING or run.attempt != attempt:
        return "nothing to do"
    if kind == "hang" and not hang_confirmed(run):
        return "not confirmed: the job wrote within the hang timeout"
    summary = {"detected": kind, "step": step}
    outcome = Outcome(kind=kind, step=step, reason=reason, summary=summary)
    remedy = remediation_begin(run=run, outcome=outcome, job_ended=False)
    if remedy is None:
        return "no remedy: the job runs on with its alert"
    run.refresh_from_db()
    stopped = stop_job(run)
    return f"remediating ({remedy.description}); job stopped: {stopped}"


def remediate_run(run_id: int, attempt: int, remedy: dict) -> str:
    run = Run.objects.select_related("cluster").filter(pk=run_id).first()
    if run is None or run.status != RunStatus.REMEDIATING or run.attempt != attempt:
        return "nothing to do"
    if not stop_job(run):
        return "the job did not stop; retrying"
    superseded = settle_metrics(run, after_step=int(remedy.get("supersede_after") or 0))
    outcome = remediation_relaunch(run=run, attempt=attempt, remedy=remedy)
    log.info("run %s: %s (%d stored points superseded)", run_id, outcome, superseded)
    return outcome


def pending_remedies() -> list[tuple[int, int, dict]]:
    """(run, attempt, remedy) of remediating runs, for a restarted worker to queue again: a relaunch task held by
    a worker that died is otherwise only redelivered after the broker's visibility timeout."""
    from runs.models import Attempt

    out = []
    for run in Run.objects.filter(status=RunStatus.REMEDIATING):
        ended = Attempt.objects.filter(run_id=run.pk, number=run.attempt).first()
        plan = (ended.exit_summary or {}).get("plan") if ended else None
        if plan:
            out.append((run.pk, run.attempt, json.loads(json.dumps(plan))))
    return out
