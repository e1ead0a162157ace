"""Storing validated batches: the entry points of ingest into the block store.

`metrics_record` (one run's records, as the watcher and the MLflow endpoints send them) and `metrics_store_many`
(the batches of several runs in one transaction, as the ingest endpoint groups them) store on either database:
every writer of a series holds its row's lock (PostgreSQL) or the database's write lock (SQLite) while it checks
which steps are present and appends one packed block per key; the detectors run, events and heartbeats are
applied, and on commit the new points go to the run's websocket group. On PostgreSQL, batches of series this
process wrote last take the unlocked path (runs.metrics.postgres), and `metrics_prepare` does all of that path's
work that needs no database ahead, so that `metrics_store_ready` holds only its one statement. Blocks come due for
compaction (`IngestResult.compact`); `metrics_record` merges them at once, the ingest endpoint after its answer.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from runs.metrics import postgres
from runs.metrics.compaction import metrics_compact_due
from runs.metrics.portable import store_portable
from runs.metrics.prepare import apply_event, points_message
from runs.metrics.rows import Entry, IngestResult, NewBlock, SeriesRow, SeriesUpdate, entries
from runs.metrics.validation import Batch, batch_confine_paths, ingest_validate
from runs.models import Run
from runs.realtime.broadcast import broadcast_many_on_commit, run_group
from runs.services.rundir import run_dir_path


def metrics_record(*, run: Run, records: Any, compact: bool = True) -> IngestResult:
    """Validate and store a batch of records for `run`; idempotent on (run, key, step).

    With compact=False the caller runs `metrics_compact_due(result.compact)` itself.
    """
    batch = ingest_validate(records)
    batch_confine_paths(batch, run_dir=run_dir_path(run))
    (result,) = metrics_store_many([(run, batch)])
    if compact and result.compact:
        metrics_compact_due(result.compact)
    return result


def metrics_store_many(batches: list[tuple[Run, Batch]], *, push: bool = True) -> list[IngestResult]:
    """Store validated batches of distinct runs in one transaction; one result per batch, in order.

    Batches stored together share the transaction's statements and its commit (one WAL flush). An error rolls back
    every batch of the call.

    The new points go to each run's websocket group on commit; with push=False each result's `push` holds the
    message instead, for a caller on an event loop to send without holding a thread and its connection.
    """
    if len({run.pk for run, _ in batches}) < len(batches):
        raise ValueError("at most one batch per run in one call")
    now = timezone.now()
    work = entries(batches)
    cached = postgres.cached_series(work) if connection.vendor == "postgresql" else None
    if cached is not None:
        prepared = postgres.prepare_unlocked(work, cached)
        if prepared is not None and postgres.write_unlocked(work, cached, *prepared, now):
            _pushes(work, push)  # committed already: broadcast_many_on_commit sends at once
            return [entry.result for entry in work]
        work = entries(batches)  # the attempt counted and ran the detectors on these entries
    with transaction.atomic():
        if connection.vendor == "postgresql":
            postgres.store_locked(work, now)
        else:
            for entry in work:
                store_portable(entry, now)
        for entry in work:
            for event in entry.batch.events:
                apply_event(entry.run, event, entry.result)
        _pushes(work, push)
    return [entry.result for entry in work]


def _pushes(work: list[Entry], push: bool) -> None:
    for entry in work:
        if entry.pushed or entry.batch.events or entry.batch.heartbeats:
            # Built only if someone listens (broadcast calls it): most runs have no chart open.
            entry.result.push = (
                run_group(entry.run.pk),
                partial(points_message, entry.run.pk, entry.pushed, entry.result.last_step),
            )
    if push:
        pushes = [entry.result.push for entry in work if entry.result.push]
        if pushes:
            broadcast_many_on_commit(pushes)


@dataclass
class Ready:
    """A batch prepared for the one-statement write (metrics_prepare)."""

    run: Run
    batch: Batch
    entry: Entry
    series: dict[tuple[int, str], SeriesRow]
    blocks: list[NewBlock]
    updates: list[SeriesUpdate]
    now: datetime.datetime


def metrics_prepare(*, run: Run, batch: Batch) -> Ready | None:
    """All of storing a validated batch that needs no database: its blocks and series rows, detectors run, from this
    process's cached series rows. None when it needs the locking path: not PostgreSQL, events, a series not cached
    here, steps that may be stored already, or an alert to raise or resolve.

    The ingest endpoint prepares each request as it arrives, while the transaction before it is still running, so
    that a transaction of several requests holds only their statement."""
    if connection.vendor != "postgresql" or batch.events:
        return None
    (entry,) = entries([(run, batch)])
    series = postgres.cached_series([entry])
    if series is None:
        return None
    prepared = postgres.prepare_unlocked([entry], series)
    if prepared is None:
        return None
    return Ready(run, batch, entry, series, *prepared, timezone.now())


def metrics_store_ready(ready: list[Ready], *, push: bool = True) -> list[IngestResult]:
    """Store prepared batches of distinct runs in one autocommitted statement. If a series row changed since they
    were prepared (another process wrote it), metrics_store_many stores them all from the start instead."""
    work = [r.entry for r in ready]
    series = {pair: row for r in ready for pair, row in r.series.items()}
    blocks = [block for r in ready for block in r.blocks]
    updates = [update for r in ready for update in r.updates]
    if postgres.write_unlocked(work, series, blocks, updates, min(r.now for r in ready)):
        _pushes(work, push)
        return [entry.result for entry in work]
    return metrics_store_many([(r.run, r.batch) for r in ready], push=push)
