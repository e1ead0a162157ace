"""What storing a batch decides before it writes, on either database: per key, the steps not stored yet, the
streaming detectors' verdicts (alerts raised or resolved), the block and series-row update to write; then the
websocket message of the new points, and the events (checkpoints, out-of-memory, NaN) applied to the run."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from runs.metrics import rollups as ru
from runs.metrics.compaction import merge_due
from runs.metrics.detectors import WATCHED_KEYS, Thresholds, detect
from runs.metrics.rows import Entry, IngestResult, NewBlock, SeriesRow, SeriesUpdate
from runs.metrics.validation import Event
from runs.models import Checkpoint, Run
from runs.services.alerts import alert_raise, alert_resolve
from runs.services.audit import SYSTEM, audit_record
from runs.services.checkpoints import checkpoint_retention_apply
from runs.services.paths import inside_run

MAX_PUSH_POINTS = 2000  # per key and message; a client that needs more reads the series API
ALERT_EVENTS = {"oom": ("oom", "Out of memory"), "nan": ("nan", "NaN/Inf loss")}


class NeedsLocks(Exception):
    """The batch cannot be written without reading its series rows under their locks."""


def prepare_entry(
    entry: Entry,
    series: dict[tuple[int, str], SeriesRow],
    present: dict[int, np.ndarray],
    blocks: list[NewBlock],
    updates: list[SeriesUpdate],
    *,
    alerts: bool = True,
) -> None:
    """Per key: drop steps already stored (`present`: the stored steps of blocks that overlap the batch, per
    series), run the detectors, and add the block and series-row update to write.

    alerts=False: raise NeedsLocks instead of raising or resolving an alert (the unlocked path writes no
    alerts)."""
    run, result = entry.run, entry.result
    thresholds = Thresholds.from_config(run.config)
    for key, (steps, values, submitted) in entry.points.items():
        row = series[(run.pk, key)]
        stored = present.get(row.id)
        if stored is not None and stored.size:
            stored = stored[(stored >= steps[0]) & (stored <= steps[-1])]
            keep = ~np.isin(steps, stored, assume_unique=True)
            steps, values = steps[keep], values[keep]
        result.duplicates += submitted - steps.size
        if steps.size == 0:
            entry.after[(run.pk, key)] = row
            continue
        result.accepted += steps.size
        new_state = new_window = None
        if key in WATCHED_KEYS:
            new_state, new_window = _run_detectors(run, key, steps, values, row, thresholds, result, alerts)
        vmin, vmax, bad = ru.finite_min_max(values)
        top = int(steps[-1])
        last_step, last_value = row.last_step, row.last_value
        if last_step is None or top > last_step:
            last_step, last_value = top, (float(values[-1]) if math.isfinite(values[-1]) else None)
        n = int(steps.size)
        blocks.append(
            NewBlock(row.id, int(steps[0]), top, n, vmin, vmax, ru.pack_steps(steps), ru.pack_values(values), bad)
        )
        updates.append(SeriesUpdate(row.id, n, last_step, last_value, new_state, new_window, row.version, run.pk, key))
        pending = row.pending_blocks + 1
        entry.after[(run.pk, key)] = SeriesRow(
            row.id,
            last_step,
            last_value,
            pending,
            row.detector_state if new_state is None else new_state,
            row.detector_window if new_window is None else new_window,
            row.version + 1,
        )
        if merge_due(0, pending, pending * n):  # points: as if all were this batch's size
            result.compact.append(row.id)
        entry.pushed[key] = (steps, values)


def _run_detectors(
    run: Run,
    key: str,
    steps: np.ndarray,
    values: np.ndarray,
    row: SeriesRow,
    thresholds: Thresholds,
    result: IngestResult,
    alerts: bool = True,
) -> tuple[dict | None, bytes]:
    """(the episode state when it changed, else None; the new window, packed)."""
    state, window = row.detector_state, row.detector_window
    current = orjson.loads(state) if isinstance(state, str | bytes) else (state or {})
    current = {k: v for k, v in current.items() if k != "w"}  # a window kept in the state before 0005
    packed = np.frombuffer(window, dtype="<f8") if window else np.empty(0)
    verdict = detect(key=key, steps=steps, values=values, state={**current, "w": packed}, thresholds=thresholds)
    if verdict.sequence and not alerts:
        raise NeedsLocks(key)
    for finding in verdict.sequence:
        if isinstance(finding, str):
            alert_resolve(run=run, kind=finding)
            continue
        alert = alert_raise(
            run=run,
            kind=finding.kind,
            severity=finding.severity,
            step=finding.step,
            message=finding.message,
            evidence=finding.evidence,
        )
        if alert is not None:
            result.alerts.append(alert.pk)
    episodes = {k: v for k, v in verdict.state.items() if k != "w"}
    new_window = np.asarray(verdict.state["w"], dtype="<f8").tobytes()
    return (None if episodes == current else episodes), new_window


def points_message(run_id: int, pushed: dict[str, tuple[np.ndarray, np.ndarray]], last_step: int | None) -> dict:
    """The websocket message of one ingest."""
    points = {key: _push_points(steps, values) for key, (steps, values) in pushed.items()}
    return {"type": "run.points", "run_id": run_id, "points": points, "last_step": last_step}


def _push_points(steps: np.ndarray, values: np.ndarray) -> list:
    """[[step, value], ...] for the websocket; a non-finite value is [step, null, "nan" | "inf" | "-inf"]."""
    if steps.size > MAX_PUSH_POINTS:
        steps, values = steps[-MAX_PUSH_POINTS:], values[-MAX_PUSH_POINTS:]
    out = [[s, v] for s, v in zip(steps.tolist(), values.tolist(), strict=True)]
    if not np.isfinite(values).all():
        for pair in out:
            if not math.isfinite(pair[1]):
                pair.append(nonfinite_name(pair[1]))
                pair[1] = None
    return out


def nonfinite_name(value: float) -> str:
    return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return nonfinite_name(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def apply_event(run: Run, event: Event, result: IngestResult) -> None:
    """A job's event record: a saved checkpoint is recorded (and the retention policy applied), an out-of-memory
    or NaN report raises its alert; other types only count."""
    etype, step, rec = event.type, event.step, event.record
    fields = {k: v for k, v in rec.items() if k not in ("kind", "type", "step", "time")}
    if etype == "checkpoint_saved":
        tag = rec.get("tag") or f"step_{step:06d}"
        path = rec.get("path") or ""
        if path and not inside_run(path, run=run):  # checked on the way in; never stored outside its run
            path = ""
        checkpoint, created = Checkpoint.objects.update_or_create(
            run_id=run.pk,
            step=step,
            defaults={
                "tag": tag[:100],
                "path": path,
                "size_bytes": rec.get("bytes", 0),
                "metrics": _json_safe(rec.get("metrics") or {}),
            },
        )
        if created:
            audit_record(actor=SYSTEM, action="checkpoint.saved", obj=checkpoint, run_id=run.pk, message=tag)
            # The job prunes by the same rule; this records what went and removes what a stricter policy drops.
            checkpoint_retention_apply(run=run, actor=SYSTEM)
        return
    if etype in ALERT_EVENTS:
        kind, label = ALERT_EVENTS[etype]
        detail = fields.get("message") or fields.get("error") or fields.get("detail") or ""
        message = f"{label} reported by the job at step {step}" + (f": {detail}" if detail else ".")
        alert = alert_raise(
            run=run, kind=kind, severity="critical", step=step, message=str(message), evidence=_json_safe(fields)
        )
        if alert is not None:
            result.alerts.append(alert.pk)


def late_ranges(entry: Entry, series: dict[tuple[int, str], SeriesRow]) -> list[tuple[int, int, int]]:
    """(series id, lo, hi) for each key whose batch reaches back to steps already stored: the range whose stored
    steps must be read to drop the batch's duplicates."""
    out = []
    for key, (steps, _values, _n) in entry.points.items():
        row = series[(entry.run.pk, key)]
        if row.last_step is not None and steps.size and steps[0] <= row.last_step:
            out.append((row.id, int(steps[0]), min(int(steps[-1]), row.last_step)))
    return out
