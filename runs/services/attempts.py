"""Attempts of a run: create the next one, claim it for a launch, record its job, end it.

The rules:
- a run has at most one live attempt (pending, claimed, submitted, running); the database enforces it;
- a launcher starts a job only while it holds the attempt's claim (`attempt_claim`: a conditional UPDATE, so of any
  number of racing launchers exactly one wins; the claim is a short lease its live launcher renews, so a launcher that
  died holding it is replaced CLAIM_LEASE_S later), and only after asking the backend for a job carrying the attempt's idempotency key;
- the first launch is attempt 1 (`attempt_first`); a resume and every automatic relaunch are the next attempt of the
  same run (`attempt_start_next`, or `run_relaunch` which also queues it); a fork is a new run with its own attempt 1;
- `Run.attempt` and `Run.backend_job_id` mirror the current attempt, for the code and tokens that read them.
"""

from __future__ import annotations

import copy
import datetime
import os
import socket
import uuid
from dataclasses import dataclass
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import Max, Q
from django.utils import timezone

from runs.models import Run, RunStatus
from runs.models.attempt import (
    ENDED_ATTEMPT_STATES,
    LIVE_ATTEMPT_STATES,
    Attempt,
    AttemptCause,
    AttemptState,
)
from runs.realtime.broadcast import broadcast_on_commit, run_group
from runs.services.audit import audit_record

# How long a claim lasts unless its launcher renews it (`attempt_renew_claim`, every CLAIM_RENEW_S while it finds or
# submits the job). Short, so that a launcher killed mid-launch is replaced within seconds (the reconciler checks
# every 5 s); a slow submit (an sbatch, pdsh to every host) keeps its claim by renewing it, not by a long lease.
CLAIM_LEASE_S = 15.0
CLAIM_RENEW_S = 4.0
# A run can be queued again from these, as the next attempt (a resume, a remediation).
RELAUNCHABLE = frozenset({RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.SUCCEEDED, RunStatus.REMEDIATING})


class AttemptRefused(Exception):
    """The next attempt cannot start now (a live job of the run); the message says why and what to do."""


@dataclass(frozen=True)
class Claim:
    attempt: Attempt
    worker: str


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _new_key(run: Run, number: int) -> str:
    # Unique across control planes sharing one cluster, readable in squeue and ps.
    return f"cp-{run.pk}-a{number}-{uuid.uuid4().hex[:12]}"


def _get(config: dict, path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _set(config: dict, path: str, value: Any) -> None:
    parts = path.split(".")
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def attempt_current(*, run: Run) -> Attempt | None:
    """The run's newest attempt (live or ended), or None for a draft."""
    return Attempt.objects.filter(run_id=run.pk).order_by("-number").first()


def attempt_live(*, run: Run) -> Attempt | None:
    return Attempt.objects.filter(run_id=run.pk, state__in=LIVE_ATTEMPT_STATES).first()


def _create(*, run: Run, number: int, cause: str, checkpoint_path: str, checkpoint_step: int | None,
            changes: dict) -> Attempt:  # fmt: skip
    try:
        with transaction.atomic():
            return Attempt.objects.create(
                run=run,
                number=number,
                cause=cause,
                idempotency_key=_new_key(run, number),
                checkpoint_path=checkpoint_path,
                checkpoint_step=checkpoint_step,
                changes=changes,
            )
    except IntegrityError:
        raise AttemptRefused(
            f"Run #{run.pk} already has a live attempt; cancel it or wait for it to end before starting another."
        ) from None


def attempt_first(*, run: Run, actor: Any = "system") -> Attempt:
    """Attempt 1 of a run being launched (draft -> queued); idempotent: the live attempt when there is one."""
    with transaction.atomic():
        Run.objects.select_for_update().filter(pk=run.pk).first()
        live = attempt_live(run=run)
        if live is not None:
            return live
        number = (Attempt.objects.filter(run_id=run.pk).aggregate(m=Max("number"))["m"] or 0) + 1
        attempt = _create(
            run=run,
            number=number,
            cause=AttemptCause.LAUNCH,
            checkpoint_path=run.resume_from,
            checkpoint_step=None,
            changes={},
        )
        Run.objects.filter(pk=run.pk).update(attempt=number)
        run.attempt = number
    return attempt


def attempt_start_next(
    *,
    run: Run,
    cause: str,
    changes: dict | None = None,
    checkpoint_path: str | None = None,
    checkpoint_step: int | None = None,
    actor: Any = "system",
    note: str = "",
) -> Attempt:
    """Open the next attempt of `run`: apply `changes` ({"batch.micro_batch": 2, ...}, dotted config paths) to the
    run's config, point the run at `checkpoint_path` (None: where the first attempt started; "": from scratch),
    and make it the run's current attempt (Run.attempt; the previous attempt's job token stops being valid when the
    launcher issues this one's). Audited and pushed to the run page. The run's status is the caller's: see
    `run_relaunch`, which also queues the launch. Refused while an earlier attempt still has a job that has not
    ended; a live attempt with no job yet (the launch never got that far) is ended as failed first.
    """
    if cause not in AttemptCause.values:
        raise ValueError(f"cause must be one of {', '.join(AttemptCause.values)}, not {cause!r}")
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        previous = attempt_current(run=locked)
        if previous is not None and previous.is_live:
            if previous.backend_job_id and locked.status not in RELAUNCHABLE:
                raise AttemptRefused(
                    f"Run #{run.pk} attempt {previous.number} still has job {previous.backend_job_id}; cancel it or "
                    "wait for it to end before starting another."
                )
            _end(previous, AttemptState.FAILED if previous.backend_job_id == "" else AttemptState.CANCELLED,
                 {"reason": f"superseded by the next attempt ({cause})"}, locked.last_step)  # fmt: skip
        first = Attempt.objects.filter(run_id=locked.pk).order_by("number").first()
        if checkpoint_path is None:
            checkpoint_path = first.checkpoint_path if first else locked.resume_from
        config = copy.deepcopy(locked.config)
        applied: dict[str, list[Any]] = {}
        for path, value in (changes or {}).items():
            applied[path] = [_get(config, path), value]
            _set(config, path, value)
        # A run launched before attempts were recorded has none yet: count on from Run.attempt.
        number = previous.number + 1 if previous else locked.attempt + (locked.status != RunStatus.DRAFT)
        config.setdefault("run", {})["attempt"] = number
        attempt = _create(
            run=locked,
            number=number,
            cause=cause,
            checkpoint_path=checkpoint_path,
            checkpoint_step=checkpoint_step,
            changes=applied,
        )
        Run.objects.filter(pk=locked.pk).update(
            attempt=number, config=config, resume_from=checkpoint_path, backend_job_id="", updated_at=timezone.now()
        )
        audit_record(
            actor=actor,
            action="run.attempt",
            obj=locked,
            message=(f"attempt {number} ({AttemptCause(cause).label.lower()})" + (f": {note}" if note else ""))[:500],
            diff={
                "attempt": [previous.number if previous else None, number],
                "resume_from": [locked.resume_from, checkpoint_path],
                **applied,
            },
        )
        broadcast_on_commit(run_group(locked.pk), {"type": "run.attempt", "run_id": locked.pk, **attempt_out(attempt)})
    run.refresh_from_db()
    return attempt


def run_relaunch(
    *,
    run: Run,
    cause: str,
    actor: Any = "system",
    changes: dict | None = None,
    checkpoint_path: str | None = None,
    checkpoint_step: int | None = None,
    reason: str = "",
) -> Attempt:
    """The next attempt of an ended (or remediating) run, queued for launch at once: what Resume and the automatic
    remediations call. Raises AttemptRefused or runs.services.transitions.IllegalTransition."""
    from runs.services.enqueue import enqueue_on_commit
    from runs.services.transitions import transition

    with transaction.atomic():
        attempt = attempt_start_next(
            run=run,
            cause=cause,
            changes=changes,
            checkpoint_path=checkpoint_path,
            checkpoint_step=checkpoint_step,
            actor=actor,
            note=reason,
        )
        transition(
            run=run,
            to=RunStatus.QUEUED,
            actor=actor,
            action="run.relaunch",
            reason=reason or f"attempt {attempt.number}",
            finished_at=None,
            failure_reason="",
        )
        enqueue_on_commit("workers.launch_run", run_id=run.pk)
    return attempt


def attempt_claim(*, run: Run, worker: str | None = None, lease_s: float = CLAIM_LEASE_S) -> Claim | None:
    """Claim the run's live attempt for a launch; None when another launcher holds it (or it has a job already).

    Exactly one of any number of concurrent callers gets the claim: a conditional UPDATE from pending, or from a
    claim whose lease ran out (its launcher died). Whoever holds the claim must still ask the backend for a job
    carrying `attempt.idempotency_key` before submitting one: a launcher may have died after submitting.
    """
    worker = worker or worker_name()
    attempt = attempt_live(run=run)
    if attempt is None:
        if run.status not in (RunStatus.QUEUED, RunStatus.LAUNCHING) or Attempt.objects.filter(run_id=run.pk).exists():
            return None
        attempt = attempt_first(run=run)  # a run queued before attempts existed
    now = timezone.now()
    claimable = Q(state=AttemptState.PENDING) | Q(state=AttemptState.CLAIMED, lease_until__lt=now)
    won = (
        Attempt.objects.filter(pk=attempt.pk)
        .filter(claimable)
        .update(
            state=AttemptState.CLAIMED,
            claimed_by=worker[:200],
            claimed_at=now,
            lease_until=now + datetime.timedelta(seconds=lease_s),
        )
    )
    if won != 1:
        return None
    attempt.refresh_from_db()
    return Claim(attempt=attempt, worker=worker)


def attempt_renew_claim(*, claim: Claim, lease_s: float = CLAIM_LEASE_S) -> bool:
    """Extend the lease of a claim its holder still has; False when it was lost (cancelled, taken over, recorded)."""
    renewed = Attempt.objects.filter(
        pk=claim.attempt.pk, state=AttemptState.CLAIMED, claimed_by=claim.worker[:200]
    ).update(lease_until=timezone.now() + datetime.timedelta(seconds=lease_s))
    return bool(renewed)


def attempt_record_job(*, claim: Claim, job_id: str, handle: dict | None = None) -> bool:
    """Record the job the claim's holder submitted (or found); False when the claim was lost meanwhile (the run was
    cancelled, or the lease ran out and another launcher took over): the caller must not follow the job then."""
    now = timezone.now()
    with transaction.atomic():
        changed = Attempt.objects.filter(
            pk=claim.attempt.pk, state=AttemptState.CLAIMED, claimed_by=claim.worker[:200]
        ).update(state=AttemptState.SUBMITTED, backend_job_id=job_id, handle=handle or {}, submitted_at=now,
                 lease_until=None)  # fmt: skip
        if changed:
            Run.objects.filter(pk=claim.attempt.run_id).update(backend_job_id=job_id)
    claim.attempt.refresh_from_db()
    return bool(changed)


def attempt_mark_running(*, run: Run) -> None:
    Attempt.objects.filter(run_id=run.pk, state__in=[AttemptState.SUBMITTED, AttemptState.CLAIMED]).update(
        state=AttemptState.RUNNING, started_at=timezone.now()
    )


def _end(attempt: Attempt, state: str, summary: dict, last_step: int | None) -> None:
    Attempt.objects.filter(pk=attempt.pk, state__in=LIVE_ATTEMPT_STATES).update(
        state=state, ended_at=timezone.now(), exit_summary=summary, last_step=last_step, lease_until=None
    )


def attempt_end(*, run: Run, state: str, summary: dict | None = None) -> Attempt | None:
    """End the run's live attempt (the job ended, or never started); None when no attempt was live."""
    if state not in ENDED_ATTEMPT_STATES:
        raise ValueError(f"an attempt ends succeeded, failed or cancelled, not {state!r}")
    attempt = attempt_live(run=run)
    if attempt is None:
        return None
    last_step = Run.objects.filter(pk=run.pk).values_list("last_step", flat=True).first()
    _end(attempt, state, summary or {}, last_step)
    attempt.refresh_from_db()
    broadcast_on_commit(run_group(run.pk), {"type": "run.attempt", "run_id": run.pk, **attempt_out(attempt)})
    return attempt


def attempt_out(attempt: Attempt) -> dict:
    """What the pages and the API show of an attempt."""

    def iso(value: datetime.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "attempt": attempt.number,
        "cause": attempt.cause,
        "state": attempt.state,
        "backend_job_id": attempt.backend_job_id,
        "checkpoint_path": attempt.checkpoint_path,
        "checkpoint_step": attempt.checkpoint_step,
        "changes": attempt.changes,
        "exit_summary": attempt.exit_summary,
        "last_step": attempt.last_step,
        "created_at": iso(attempt.created_at),
        "started_at": iso(attempt.started_at),
        "ended_at": iso(attempt.ended_at),
    }
