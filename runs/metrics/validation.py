"""Ingest validation: a request body parsed, and its records checked and grouped by key into a `Batch`.

The body takes docs/run-config.md's two forms, or both at once: records (`{"records": [...]}`, each a run-directory
record: metrics, event, heartbeat) and columns (`{"series": {key: {"steps": [...], "values": [...]}}}`, each key's
points as two lists). Both follow the same rules. A batch is refused whole on any error, and `IngestInvalid` names
each offending record or column and field, so the reporter or script that sent it can say what to fix.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from runs.services.paths import PathRefused, confine, path_shape_problem
from runs.text import NUL_MESSAGE, json_nul_fields

KEY_RE = re.compile(r"[A-Za-z0-9_./-]{1,100}\Z")
MAX_BODY_BYTES = 2 * 1024 * 1024
MAX_RECORDS = 5000
MAX_POINTS = 100_000
MAX_STEP = 2**53  # rollups keep steps as float64, exact up to here
MAX_TIME = 253_402_300_799  # 9999-12-31T23:59:59Z, the last second a datetime holds
MAX_ERRORS = 20
MAX_SERIES_PER_REQUEST = 2000
NONFINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "infinity": math.inf, "+infinity": math.inf}
NONFINITE |= {"-inf": -math.inf, "-infinity": -math.inf}
EVENT_TYPE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


class IngestInvalid(Exception):
    """The batch is refused whole; `errors` name each offending record index and field."""

    def __init__(self, errors: list[dict]):
        self.errors = errors
        super().__init__("; ".join(_describe(e) for e in errors[:3]))

    def as_json(self) -> dict:
        return {"error": str(self), "errors": self.errors}


def _describe(error: dict) -> str:
    where = "body" if error.get("index") is None else f"records[{error['index']}]"
    if error.get("field"):
        where += f".{error['field']}"
    return f"{where}: {error['message']}"


def _error(index: int | None, field_name: str, message: str) -> dict:
    return {"index": index, "field": field_name, "message": message}


def ingest_parse(body: bytes) -> dict:
    """A request body's JSON object, with `records`, `series` or both. NaN/Infinity literals are tolerated
    (Python's json writes them)."""
    if len(body) > MAX_BODY_BYTES:
        raise IngestInvalid([_error(None, "", f"is {len(body)} bytes; the limit is {MAX_BODY_BYTES} bytes")])
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise IngestInvalid([_error(None, "", f"is not JSON ({exc})")]) from None
    if not isinstance(doc, dict) or ("records" not in doc and "series" not in doc):
        raise IngestInvalid([_error(None, "records", 'missing: send {"records": [...]} or {"series": {...}}')])
    return doc


def ingest_body(body: bytes) -> Batch:
    """A request body parsed and validated, in either form (IngestInvalid names what to fix)."""
    doc = ingest_parse(body)
    if nul := json_nul_fields(body):  # a byte search for the usual body: PostgreSQL stores no NUL in text or jsonb
        raise IngestInvalid([_error(None, field, NUL_MESSAGE) for field in nul[:MAX_ERRORS]])
    batch = ingest_validate(doc["records"]) if "records" in doc else Batch()
    if "series" in doc:
        _add_series(batch, doc["series"])
    return batch


def _step_of(raw: Any) -> int | None:
    if type(raw) is int:
        return raw if 0 <= raw <= MAX_STEP else None
    if type(raw) is float and raw.is_integer() and 0 <= raw <= MAX_STEP:
        return int(raw)
    return None


def _number(raw: Any) -> float | None:
    kind = type(raw)
    if kind is float:
        return raw
    if kind is int:
        return float(raw) if -_INT_FLOAT_MAX <= raw <= _INT_FLOAT_MAX else None
    if kind is str:
        return NONFINITE.get(raw.strip().lower())
    return None


_INT_FLOAT_MAX = 2**1023  # beyond this an integer has no float64 (float() raises); refused as "not a number"


class Column(NamedTuple):
    """One key's points of a batch, in the order they were sent."""

    steps: list[int]
    values: list[float]


class Event(NamedTuple):
    """An event record of a batch: where it was in the body, its type and step, and the record itself."""

    position: int  # its index in the records
    type: str
    step: int
    record: dict


@dataclass
class Batch:
    """A validated request: metric points grouped by key, events, heartbeats and the highest step seen."""

    metrics: dict[str, Column] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    heartbeat_time: float | None = None
    heartbeats: int = 0
    max_step: int | None = None
    points: int = 0


def ingest_validate(records: Any) -> Batch:
    """Check every record (the whole batch is refused on any error) and group metric points by key."""
    if not isinstance(records, list):
        raise IngestInvalid([_error(None, "records", "must be a list of records")])
    if len(records) > MAX_RECORDS:
        raise IngestInvalid(
            [_error(None, "records", f"has {len(records)} records; send at most {MAX_RECORDS} per request")]
        )
    batch = Batch()
    errors: list[dict] = []
    metrics = batch.metrics
    max_step = -1
    for i, rec in enumerate(records):
        if len(errors) >= MAX_ERRORS:
            break
        if type(rec) is not dict:
            errors.append(_error(i, "", "must be an object"))
            continue
        kind = rec.get("kind")
        step = rec.get("step")
        step = step if type(step) is int and 0 <= step <= MAX_STEP else _step_of(step)
        if step is None:
            if "step" not in rec:
                errors.append(_error(i, "step", "missing"))
            else:
                errors.append(_error(i, "step", f"{rec['step']!r} is not an integer between 0 and 2**53"))
            continue
        if step > max_step:
            max_step = step
        if kind == "metrics":
            values = rec.get("values")
            if type(values) is not dict or not values:
                errors.append(_error(i, "values", "must be a non-empty object of key: number"))
                continue
            for key, raw in values.items():
                number = raw if type(raw) is float else _number(raw)  # float: the usual case, without a call
                column = metrics.get(key)
                if column is None:
                    if not KEY_RE.match(key):
                        errors.append(_error(i, f"values.{key}", "key must match [A-Za-z0-9_./-]{1,100}"))
                        continue
                    if len(metrics) >= MAX_SERIES_PER_REQUEST:
                        errors.append(_error(i, "values", f"more than {MAX_SERIES_PER_REQUEST} keys in one request"))
                        break
                    column = metrics[key] = Column([], [])
                if number is None:
                    errors.append(
                        _error(i, f"values.{key}", f"{raw!r} is not a number (NaN/Infinity may be sent as strings)")
                    )
                    continue
                column.steps.append(step)
                column.values.append(number)
            batch.points += len(values)
        elif kind == "heartbeat":
            batch.heartbeats += 1
            when = rec.get("time")
            if when is not None and (type(when) not in (int, float) or not 0 <= when <= MAX_TIME):
                errors.append(_error(i, "time", f"{when!r} is not a Unix time in seconds (0 to {MAX_TIME})"))
                continue
            if when is not None and (batch.heartbeat_time is None or when > batch.heartbeat_time):
                batch.heartbeat_time = float(when)
            elif when is None:
                batch.heartbeat_time = math.inf
        elif kind == "event":
            etype = rec.get("type")
            if not isinstance(etype, str) or not EVENT_TYPE_RE.match(etype):
                errors.append(_error(i, "type", "must be an event name such as checkpoint_saved, oom, nan"))
                continue
            problem = _event_problem(etype, rec)
            if problem:
                errors.append(_error(i, problem[0], problem[1]))
                continue
            batch.events.append(Event(i, etype, step, rec))
        else:
            errors.append(_error(i, "kind", f"{kind!r} is not one of metrics, event, heartbeat"))
    if batch.points > MAX_POINTS and not errors:
        errors.append(_error(None, "records", f"hold {batch.points} points; send at most {MAX_POINTS} per request"))
    if errors:
        raise IngestInvalid(errors)
    batch.max_step = max_step if max_step >= 0 else None
    return batch


def _event_problem(etype: str, rec: dict) -> tuple[str, str] | None:
    if etype != "checkpoint_saved":
        return None
    if not isinstance(rec.get("tag", ""), str) or not isinstance(rec.get("path", ""), str):
        return "path", "tag and path must be strings"
    if rec.get("path") and (problem := path_shape_problem(rec["path"])) is not None:
        return "path", problem
    size = rec.get("bytes", 0)
    if type(size) is not int or not 0 <= size < 2**63:
        return "bytes", f"{size!r} is not a non-negative integer below 2**63"
    if not isinstance(rec.get("metrics", {}), dict):
        return "metrics", "must be an object of metric: value"
    return None


def _add_series(batch: Batch, series: Any) -> None:
    """Check the columns of a body (`series`) and add their points to the batch; the same rules as records'."""
    if type(series) is not dict:
        raise IngestInvalid([_error(None, "series", 'must be an object of key: {"steps": [...], "values": [...]}')])
    errors: list[dict] = []
    metrics = batch.metrics
    max_step = -1 if batch.max_step is None else batch.max_step
    for key, column in series.items():
        if len(errors) >= MAX_ERRORS:
            break
        where = f"series.{key}"
        if not KEY_RE.match(key):
            errors.append(_error(None, where, "key must match [A-Za-z0-9_./-]{1,100}"))
            continue
        if key not in metrics and len(metrics) >= MAX_SERIES_PER_REQUEST:
            errors.append(_error(None, "series", f"more than {MAX_SERIES_PER_REQUEST} keys in one request"))
            break
        if type(column) is not dict:
            errors.append(_error(None, where, 'must be an object {"steps": [...], "values": [...]}'))
            continue
        raw_steps, raw_values = column.get("steps"), column.get("values")
        if type(raw_steps) is not list or not raw_steps:
            errors.append(_error(None, f"{where}.steps", "must be a non-empty list of steps"))
            continue
        if type(raw_values) is not list or len(raw_values) != len(raw_steps):
            n = len(raw_steps)
            errors.append(_error(None, f"{where}.values", f"must be a list of {n} numbers, one per step"))
            continue
        steps = _steps_column(raw_steps, where, errors)
        values = _values_column(raw_values, where, errors)
        if steps is None or values is None:
            continue
        batch.points += len(steps)
        max_step = max(max_step, max(steps))
        known = metrics.get(key)
        if known is not None:  # the same key in records too: theirs first, as a repeated step keeps its first value
            steps, values = known.steps + steps, known.values + values
        metrics[key] = Column(steps, values)
    if batch.points > MAX_POINTS and not errors:
        errors.append(_error(None, "series", f"hold {batch.points} points; send at most {MAX_POINTS} per request"))
    if errors:
        raise IngestInvalid(errors)
    batch.max_step = max_step if max_step >= 0 else None


def _steps_column(raw: list, where: str, errors: list[dict]) -> list[int] | None:
    """A column's steps; None (and an error naming the first bad one) unless each is a step as in records. Plain
    Python: for the few dozen points of a request, each numpy call costs more than a pass over the list."""
    if set(map(type, raw)) == _INT_ONLY and min(raw) >= 0 and max(raw) <= MAX_STEP:  # the usual case
        return raw
    converted = [_step_of(value) for value in raw]
    if None in converted:
        i = converted.index(None)
        errors.append(_error(None, f"{where}.steps[{i}]", f"{raw[i]!r} is not an integer between 0 and 2**53"))
        return None
    return converted  # type: ignore[return-value]


def _values_column(raw: list, where: str, errors: list[dict]) -> list[float] | None:
    """A column's values; None (and an error naming the first bad one) unless each is a number, or a NaN/infinity
    string, as in records."""
    if set(map(type, raw)) == _FLOAT_ONLY:  # the usual case
        return raw
    converted = [_number(value) for value in raw]
    if None in converted:
        i = converted.index(None)
        message = f"{raw[i]!r} is not a number (NaN/Infinity may be sent as strings)"
        errors.append(_error(None, f"{where}.values[{i}]", message))
        return None
    return converted  # type: ignore[return-value]


_INT_ONLY = {int}
_FLOAT_ONLY = {float}


def batch_confine_paths(batch: Batch, *, run_dir: Path) -> None:
    """Refuse the batch when an event's path leaves the run's directory (runs.services.paths); each path is
    replaced by its resolved form."""
    errors = []
    for event in batch.events:
        path = event.record.get("path")
        if event.type != "checkpoint_saved" or not path:
            continue
        try:
            event.record["path"] = str(confine(path, run_dir=run_dir, field="path"))
        except PathRefused as exc:
            errors.append(_error(event.position, "path", exc.message))
    if errors:
        raise IngestInvalid(errors)
