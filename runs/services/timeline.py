"""A run's timeline of attempts, for the run page: what ended each attempt, what the next one changed, the checkpoint
it restored, the steps it redid (marked on the charts) and the GPU-hours that cost."""

from __future__ import annotations

from dataclasses import dataclass

from runs.models import Attempt, Run


@dataclass(frozen=True)
class TimelineRow:
    attempt: Attempt
    cause: str
    restored: str  # "step 40" / "from the start" / a checkpoint path
    changes: list[tuple[str, object, object]]  # (dotted path, old, new)
    ended: str  # how it ended, with the remedy planned after it
    replaced: tuple[int, int] | None  # steps (lo, hi) of this attempt that the next one redid
    gpu_hours_lost: float | None


def _gpus(run: Run) -> int:
    cluster = (run.config or {}).get("cluster") or {}
    return int(cluster.get("nodes", 1)) * int(cluster.get("gpus_per_node", 1))


def _hours(a, b) -> float:
    return max(0.0, (b - a).total_seconds() / 3600.0)


def run_timeline(run: Run) -> list[TimelineRow]:
    attempts = list(Attempt.objects.filter(run_id=run.pk).order_by("number"))
    gpus = _gpus(run)
    rows = []
    for i, a in enumerate(attempts):
        nxt = attempts[i + 1] if i + 1 < len(attempts) else None
        restored = (
            f"step {a.checkpoint_step}"
            if a.checkpoint_step
            else (a.checkpoint_path.rsplit("/", 1)[-1] if a.checkpoint_path else "from the start")
        )
        changes = [
            (path, pair[0], pair[1])
            for path, pair in (a.changes or {}).items()
            if isinstance(pair, list) and len(pair) == 2 and not path.startswith("remediation.")
        ]
        summary = a.exit_summary or {}
        ended = summary.get("reason") or ""
        if summary.get("remedy"):
            ended = f"{ended} → {summary['remedy']}" if ended else summary["remedy"]
        replaced = None
        lost = None
        if nxt is not None and a.last_step is not None:
            restart = nxt.checkpoint_step or 0
            own_start = a.checkpoint_step or 0
            if a.last_step > restart:
                replaced = (restart + 1, a.last_step)
            if a.started_at and a.ended_at:
                done = max(1, a.last_step - own_start)
                redone = max(0, a.last_step - max(restart, own_start))
                lost = gpus * _hours(a.started_at, a.ended_at) * redone / done
                if nxt.started_at:  # the GPUs held idle until the next attempt ran
                    lost += gpus * _hours(a.ended_at, nxt.started_at)
                lost = round(lost, 4)
        rows.append(TimelineRow(a, a.get_cause_display(), restored, changes, ended, replaced, lost))
    return rows


def replaced_ranges(rows: list[TimelineRow]) -> list[dict]:
    """What the charts mark: each range of steps an attempt logged and a later one redid."""
    return [{"lo": r.replaced[0], "hi": r.replaced[1], "attempt": r.attempt.number} for r in rows if r.replaced]
