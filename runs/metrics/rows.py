"""The named types a batch travels in on its way into the database: series rows as read, the updates and blocks
to write, one run's batch in flight (`Entry`), and the result a client is answered with."""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from runs.metrics.validation import Batch
from runs.models import Run
from runs.realtime.broadcast import Message


class SeriesRow(NamedTuple):
    """A MetricSeries row as ingest reads it under its lock, or as this process last committed it."""

    id: int
    last_step: int | None
    last_value: float | None
    pending_blocks: int  # ingest blocks not yet merged (compaction)
    detector_state: Any  # detector episodes: a dict, or the JSON text the database returned
    detector_window: bytes | None  # the detectors' recent values, packed float64
    version: int  # bumped by every ingest that writes the row


class SeriesUpdate(NamedTuple):
    """What one batch writes to a series row."""

    series_id: int
    points: int  # points added
    last_step: int | None
    last_value: float | None
    detector_state: dict | None  # None: the episodes did not change
    detector_window: bytes | None  # None: no detector watches the key
    version: int  # the version the batch was prepared from
    run_id: int
    key: str


class NewBlock(NamedTuple):
    """An ingest block (tier 0) to insert: one key's new points of one batch."""

    series_id: int
    lo: int
    hi: int
    n: int
    vmin: float | None
    vmax: float | None
    steps: bytes  # packed (rollups.pack_steps)
    values: bytes
    bad: int  # non-finite values


class Points(NamedTuple):
    """One key's points of a batch: sorted, each step once, and how many were sent before duplicates went."""

    steps: np.ndarray
    values: np.ndarray
    submitted: int


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    events: int = 0
    heartbeats: int = 0
    last_step: int | None = None
    alerts: list[int] = field(default_factory=list)
    compact: list[int] = field(default_factory=list)  # series now due for compaction
    push: tuple[str, Message] | None = None  # (group, websocket message) left to the caller by push=False

    def as_json(self) -> dict:
        return {
            "ok": True,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "events": self.events,
            "heartbeats": self.heartbeats,
            "last_step": self.last_step,
            "alerts": self.alerts,
        }


class RunGone(Exception):
    """The run was deleted after its token was checked."""


@dataclass
class Entry:
    """One run's batch on its way into the database."""

    run: Run
    batch: Batch
    result: IngestResult
    points: dict[str, Points]
    pushed: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # new steps, values: the push
    after: dict[tuple[int, str], SeriesRow] = field(default_factory=dict)  # the series rows once committed


def sorted_points(raw_steps: list[int], raw_values: list[float]) -> Points:
    steps = np.array(raw_steps, dtype=np.int64)
    values = np.array(raw_values, dtype=np.float64)
    submitted = steps.size
    if submitted > 1 and not bool(np.all(steps[1:] > steps[:-1])):
        steps, first = np.unique(steps, return_index=True)  # sorted; a step repeated in the batch: first wins
        values = values[first]
    return Points(steps, values, submitted)


def entries(batches: list[tuple[Run, Batch]]) -> list[Entry]:
    """An Entry per (run, batch), keys in sorted order (the order their series rows are created and locked in)."""
    return [
        Entry(
            run=run,
            batch=batch,
            result=IngestResult(events=len(batch.events), heartbeats=batch.heartbeats),
            points={key: sorted_points(*batch.metrics[key]) for key in sorted(batch.metrics)},
        )
        for run, batch in batches
    ]


def heartbeat_at(batch: Batch, now: datetime.datetime) -> datetime.datetime | None:
    # A heartbeat replayed from a backlog must not make a hung job look alive: its own time counts, never later
    # than now (a node clock running ahead cannot push liveness into the future).
    if not batch.heartbeats:
        return None
    when = batch.heartbeat_time
    if when is None or not math.isfinite(when) or when >= now.timestamp():
        return now
    return datetime.datetime.fromtimestamp(when, tz=datetime.UTC)
