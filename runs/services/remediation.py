"""Automatic remediation: a failed or unstable attempt is relaunched, changed, by the control plane itself.

What the run's stored policy (config["remediation"], docs/run-config.md) and the guide's section 7 prescribe:
- out of memory: relaunch from the last checkpoint with the next remedy of `remediation.oom` (half the micro-batch
  and twice the accumulation, the global batch checked unchanged; then activation checkpointing; then optimizer
  offload); with none left, stop and say what was tried;
- loss spike or NaN (`on_spike: "rollback"`): roll back to a checkpoint about `rewind_steps` before the spike and
  skip a window of `skip_batches` data steps from there (PaLM's practice), optionally with an lr cut; stop after
  `max_rollbacks`;
- hang, lost job, node failure (`on_hang: "relaunch"`): relaunch from the last checkpoint, at most
  `max_restarts` in `restart_window_s`, with back-off; the caller has confirmed that the job is not progressing.
Every automatic relaunch counts against `max_attempts`.

The moves: `remediation_begin` (run -> remediating, the attempt ended with what happened, a relaunch task queued
after the back-off; or, with nothing left to try, the run failed with what was tried), then the worker stops what
is left of the job, settles its metrics and calls `remediation_relaunch` (remediating -> queued, the next attempt
with its changes). Cancelling a remediating run ends it: the relaunch task then finds nothing to do. Each step is
audited and pushed to the run page; the fault's alert is raised once by whoever detected it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import transaction

from jobs.common import relaunch
from jobs.common.run_config import ConfigError, parse_run_config
from runs.models import Attempt, Checkpoint, Run, RunStatus
from runs.models.attempt import AttemptCause, AttemptState
from runs.services.attempts import AttemptRefused, attempt_end, run_relaunch
from runs.services.audit import audit_record
from runs.services.enqueue import enqueue_on_commit
from runs.services.jobs import run_finish
from runs.services.transitions import IllegalTransition, transition

log = logging.getLogger(__name__)

RELAUNCH_TASK = "workers.remediate_run"
AUTOMATIC_CAUSES = frozenset(
    {AttemptCause.OOM, AttemptCause.INSTABILITY, AttemptCause.HANG, AttemptCause.JOB_LOST, AttemptCause.NODE_FAILURE}
)
RESTART_CAUSES = frozenset({AttemptCause.HANG, AttemptCause.JOB_LOST, AttemptCause.NODE_FAILURE})
# What an outcome's kind is remedied as.
KIND_CAUSE = {
    "oom": AttemptCause.OOM,
    "nan": AttemptCause.INSTABILITY,
    "loss_spike": AttemptCause.INSTABILITY,
    "hang": AttemptCause.HANG,
    "job_lost": AttemptCause.JOB_LOST,
    "node_failure": AttemptCause.NODE_FAILURE,
}
MAX_BACKOFF_S = 300.0


@dataclass(frozen=True)
class Policy:
    """config["remediation"] with the defaults of the keys a preset may leave out."""

    oom: tuple[str, ...] = ()
    max_attempts: int = 0
    on_spike: str = "alert"
    rewind_steps: int = 100
    skip_batches: int = 200
    lr_cut_factor: float = 1.0
    lr_cut_steps: int = 0
    max_rollbacks: int = 3
    on_hang: str = "relaunch"
    max_restarts: int = 3
    restart_window_s: float = 3600.0
    backoff_s: float = 5.0

    @classmethod
    def of(cls, run: Run) -> Policy:
        raw = dict((run.config or {}).get("remediation") or {})
        known = {f for f in cls.__dataclass_fields__}
        values: dict[str, Any] = {k: v for k, v in raw.items() if k in known and v is not None}
        values["oom"] = tuple(x for x in values.get("oom", ()) if x in relaunch.OOM_CHANGES)
        return cls(**values)


@dataclass(frozen=True)
class Outcome:
    """What went wrong with the current attempt, as the watcher or a detector saw it."""

    kind: str  # oom | nan | loss_spike | hang | job_lost | node_failure | error
    step: int | None
    reason: str
    summary: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Remedy:
    cause: str
    changes: dict  # dotted config path -> new value
    checkpoint_path: str  # "" = from scratch
    checkpoint_step: int | None
    description: str
    backoff_s: float
    supersede_after: int  # stored points of later steps are replaced by the next attempt's


@dataclass(frozen=True)
class Decision:
    remedy: Remedy | None
    why: str  # with no remedy: why none, and what was tried


def _automatic(run: Run) -> list[Attempt]:
    return list(Attempt.objects.filter(run_id=run.pk, cause__in=AUTOMATIC_CAUSES).order_by("number"))


def _tried(attempts: list[Attempt]) -> str:
    """'attempt 2: <the remedy it was launched with> -> <how it ended>; ...' for these automatic attempts. How an
    attempt ended is the watcher's reason, which names the culprit (e.g. "rank 1 on vm was killed by SIGKILL")."""
    numbers = {a.number for a in attempts}
    if not numbers:
        return "nothing"
    run_id = attempts[0].run_id
    remedies = dict(
        Attempt.objects.filter(run_id=run_id, number__in=[n - 1 for n in numbers]).values_list("number", "exit_summary")
    )
    out = []
    for a in attempts:
        text = f"attempt {a.number}: {(remedies.get(a.number - 1) or {}).get('remedy') or a.cause}"
        ended = str((a.exit_summary or {}).get("reason") or "")
        if ended:
            text += f" -> {ended[:160]}"
        out.append(text)
    return "; ".join(out)


def _checkpoints(run: Run, before_step: int | None = None) -> list[Checkpoint]:
    """The run's checkpoints on its current line, newest first: one of a later step than the current attempt has
    reached was written by an earlier attempt whose steps from there on were replaced (rolled back)."""
    qs = Checkpoint.objects.filter(run_id=run.pk, pruned_at__isnull=True).order_by("-step")
    reached = Run.objects.filter(pk=run.pk).values_list("last_step", flat=True).first()
    if reached is not None:
        qs = qs.filter(step__lte=reached)
    if before_step is not None:
        qs = qs.filter(step__lt=before_step)
    return list(qs)


def _diff(old: dict, new: dict, prefix: str = "") -> dict:
    """Dotted paths whose value differs, with the new value (a list as one value)."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and isinstance(old.get(key, {}), dict):
            out.update(_diff(old.get(key, {}), value, path + "."))
        elif old.get(key) != value:
            out[path] = value
    return out


def _backoff(policy: Policy, earlier: int) -> float:
    return min(MAX_BACKOFF_S, policy.backoff_s * (2**earlier))


def remediation_decide(*, run: Run, outcome: Outcome) -> Decision:
    """The next automatic step for `outcome`, or why there is none (pure: reads the run, changes nothing)."""
    policy = Policy.of(run)
    cause = KIND_CAUSE.get(outcome.kind)
    if cause is None:
        return Decision(None, "")  # a plain error: a relaunch would meet it again
    done = _automatic(run)
    if len(done) >= policy.max_attempts:
        return Decision(None, f"the policy's {policy.max_attempts} automatic relaunches are used up ({_tried(done)})")
    latest = _checkpoints(run)
    last = latest[0] if latest else None
    if cause == AttemptCause.OOM:
        return _oom(run, policy, done, last)
    if cause == AttemptCause.INSTABILITY:
        return _rollback(run, policy, done, outcome)
    if policy.on_hang != "relaunch":
        return Decision(None, "the policy relaunches nothing after a hang or a lost job")
    import datetime

    from django.utils import timezone

    since = timezone.now() - datetime.timedelta(seconds=policy.restart_window_s)
    recent = [a for a in done if a.cause in RESTART_CAUSES and a.created_at >= since]
    if len(recent) >= policy.max_restarts:
        return Decision(
            None,
            f"{len(recent)} restarts within {policy.restart_window_s:.0f} s already, the policy's limit "
            f"({_tried(recent)})",
        )
    where = f"from {last.tag}" if last else "from the start"
    return Decision(
        Remedy(
            cause=cause,
            changes={},
            checkpoint_path=last.path if last else "",
            checkpoint_step=last.step if last else 0,
            description=f"relaunch {where}",
            backoff_s=_backoff(policy, len(recent)),
            supersede_after=last.step if last else 0,
        ),
        "",
    )


def _oom(run: Run, policy: Policy, done: list[Attempt], last: Checkpoint | None) -> Decision:
    ooms = [a for a in done if a.cause == AttemptCause.OOM]
    config = run.config
    used = set((config.get("remediation") or {}).get("applied") or [])
    skipped = []
    for name in policy.oom:
        if name in used:
            continue
        try:
            change = relaunch.OOM_CHANGES[name](config)
        except relaunch.CannotChange as exc:
            skipped.append(f"{name}: {exc}")
            continue
        where = f"from {last.tag}" if last else "from the start"
        return Decision(
            Remedy(
                cause=AttemptCause.OOM,
                changes={**_diff(config, change.raw), "remediation.applied": _applied(config, name)},
                checkpoint_path=last.path if last else "",
                checkpoint_step=last.step if last else 0,
                description=f"{change.description}; relaunch {where}",
                backoff_s=_backoff(policy, len(ooms)),
                supersede_after=last.step if last else 0,
            ),
            "",
        )
    listed = ", ".join(policy.oom) or "none"
    extra = f" (not applicable: {'; '.join(skipped)})" if skipped else ""
    return Decision(None, f"out-of-memory remedies exhausted (the policy lists {listed}); tried {_tried(ooms)}{extra}")


def _applied(config: dict, name: str) -> list[str]:
    """The remedies this run's config has had applied, kept in its remediation section for the next decision."""
    return [*((config.get("remediation") or {}).get("applied") or []), name]


def _rollback(run: Run, policy: Policy, done: list[Attempt], outcome: Outcome) -> Decision:
    if policy.on_spike != "rollback":
        return Decision(None, "the policy only alerts on a loss spike or NaN")
    rollbacks = [a for a in done if a.cause == AttemptCause.INSTABILITY]
    if len(rollbacks) >= policy.max_rollbacks:
        return Decision(None, f"{len(rollbacks)} rollbacks already, the policy's limit ({_tried(rollbacks)})")
    spike = outcome.step or run.last_step or 1
    candidates = _checkpoints(run, before_step=spike)
    target = next((c for c in candidates if c.step <= spike - policy.rewind_steps), None)
    target = target or (candidates[0] if candidates else None)
    restart = target.step if target else 0
    config = run.config
    try:
        cfg = parse_run_config(config)
    except ConfigError as exc:
        return Decision(None, f"the run's config does not parse ({exc})")
    first = cfg.relaunch.data_step(restart + 1)
    end = max(first + policy.skip_batches, cfg.relaunch.data_step(spike) + 1)
    change = relaunch.skip_data(config, first=first, end=end)
    text = [change.description]
    if policy.lr_cut_factor < 1.0 and policy.lr_cut_steps > 0:
        cut = relaunch.lr_cut(change.raw, factor=policy.lr_cut_factor, from_step=restart + 1, steps=policy.lr_cut_steps)
        change, text = cut, [*text, cut.description]
    where = f"roll back to {target.tag}" if target else "restart from the start"
    return Decision(
        Remedy(
            cause=AttemptCause.INSTABILITY,
            changes=_diff(config, change.raw),
            checkpoint_path=target.path if target else "",
            checkpoint_step=restart,
            description=f"{where}; {'; '.join(text)}",
            backoff_s=_backoff(policy, len(rollbacks)),
            supersede_after=restart,
        ),
        "",
    )


def remediation_begin(*, run: Run, outcome: Outcome, job_ended: bool = True) -> Remedy | None:
    """Act on a failed or unstable attempt: start the remedy (None when another actor moved the run first), or,
    with nothing to try, end the run failed saying why (a job still running is left to run, with its alert). The
    caller has raised the fault's alert."""
    decision = remediation_decide(run=run, outcome=outcome)
    remedy = decision.remedy
    if remedy is None and not job_ended:
        return None
    if remedy is None:
        if decision.why:
            reason = f"{outcome.reason} — automatic remediation stopped: {decision.why}"
        else:
            reason = outcome.reason
        run_finish(run=run, status=RunStatus.FAILED, reason=reason[:2000], summary=outcome.summary)
        return None
    reason = f"{outcome.reason[:300]} — remediating: {remedy.description} in {remedy.backoff_s:.0f} s"
    with transaction.atomic():
        try:
            run = transition(run=run, to=RunStatus.REMEDIATING, actor="system", action="run.remediate", reason=reason)
        except IllegalTransition:
            return None
        attempt_end(
            run=run,
            state=AttemptState.FAILED,
            summary={
                **outcome.summary,
                "reason": outcome.reason,
                "kind": outcome.kind,
                "step": outcome.step,
                "remedy": remedy.description,
                "plan": asdict(remedy),
            },  # fmt: skip
        )
        audit_record(actor="system", action="remediation.planned", obj=run, message=reason[:500],
                     diff={"remedy": [None, asdict(remedy)]})  # fmt: skip
        enqueue_on_commit(RELAUNCH_TASK, run_id=run.pk, attempt=run.attempt, remedy=asdict(remedy),
                          countdown=remedy.backoff_s)  # fmt: skip
    return remedy


def remediation_relaunch(*, run: Run, attempt: int, remedy: dict) -> str:
    """The remedy's relaunch, once the worker has stopped what was left of the job and settled its metrics.
    Idempotent: a run no longer remediating attempt `attempt` (cancelled, or relaunched already) is left alone."""
    run.refresh_from_db()
    if run.status != RunStatus.REMEDIATING or run.attempt != attempt:
        return f"nothing to do: run is {run.status}, attempt {run.attempt}"
    r = Remedy(**remedy)
    try:
        new = run_relaunch(
            run=run,
            cause=r.cause,
            changes=r.changes,
            checkpoint_path=r.checkpoint_path,
            checkpoint_step=r.checkpoint_step,
            reason=f"automatic remediation: {r.description}",
        )
    except (AttemptRefused, IllegalTransition) as exc:
        return f"not relaunched: {exc}"
    return f"attempt {new.number} queued: {r.description}"


def remediation_consider_alert(*, run: Run, kind: str, step: int | None, message: str) -> None:
    """A detector's new alert on a running job: a loss spike or NaN under a rollback policy, or a hang, starts
    remediation in the worker (which stops the job first). Called inside the alert's transaction."""
    policy = Policy.of(run)
    if kind in ("loss_spike", "nan") and policy.on_spike != "rollback":
        return
    if kind == "hang" and policy.on_hang != "relaunch":
        return
    if kind not in ("loss_spike", "nan", "hang") or policy.max_attempts <= 0:
        return
    attempt = Run.objects.filter(pk=run.pk).values_list("attempt", flat=True).first()
    enqueue_on_commit("workers.remediate_running", run_id=run.pk, attempt=attempt, kind=kind, step=step,
                      reason=message)  # fmt: skip
