"""Ingest of series this process knows: one autocommitted statement, checked against each row's version."""

from __future__ import annotations

import threading

import pytest
from django.db import connections

from runs.metrics import postgres
from runs.metrics.reads import series_read
from runs.metrics.store import metrics_prepare, metrics_record, metrics_store_ready
from runs.metrics.validation import ingest_validate
from runs.models import MetricBlock, MetricSeries, Run
from tests.runs.factories import tiny_run

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(
        "sqlite" in __import__("django.conf", fromlist=["settings"]).settings.DATABASES["default"]["ENGINE"],
        reason="the unlocked write is PostgreSQL's; SQLite has one writer at a time",
    ),
]

KEYS = ("loss", "lr", "tokens_per_s")


@pytest.fixture
def run(seeded, operator):
    return tiny_run(owner=operator)


@pytest.fixture
def locked_writes(monkeypatch):
    """How many times the locking path ran."""
    calls = []
    original = postgres.store_locked

    def counting(work, now):
        calls.append(len(work))
        return original(work, now)

    monkeypatch.setattr(postgres, "store_locked", counting)
    return calls


def batch(start: int, count: int = 50) -> list[dict]:
    return [
        {"kind": "metrics", "step": s, "values": {"loss": 2.0 + (s % 3) * 1e-3, "lr": 1e-3, "tokens_per_s": 1e4}}
        for s in range(start, start + count)
    ]


def steps_of(run: Run, key: str) -> list[int]:
    return series_read(run_id=run.pk, keys=[key], max_points=10_000)["keys"][key]["steps"].tolist()


def test_a_known_series_is_written_without_locks(run, locked_writes):
    metrics_record(run=run, records=batch(0))
    assert locked_writes == [1]  # new series: created and locked
    result = metrics_record(run=run, records=batch(50))
    assert locked_writes == [1]
    assert (result.accepted, result.duplicates, result.last_step) == (150, 0, 99)
    for key in KEYS:
        assert steps_of(run, key) == list(range(100))
        series = MetricSeries.objects.get(run=run, key=key)
        assert (series.points, series.last_step, series.version) == (100, 99, 2)
        assert postgres.series_cache[(run.pk, key)].version == 2
    assert Run.objects.get(pk=run.pk).last_step == 99


def test_a_series_written_elsewhere_meanwhile_is_written_again_under_locks(run, locked_writes):
    metrics_record(run=run, records=batch(0))
    seen_here = dict(postgres.series_cache)
    metrics_record(run=run, records=batch(50))  # as another process would: this one's cache is put back below
    postgres.series_cache.clear()
    postgres.series_cache.update(seen_here)

    result = metrics_record(run=run, records=batch(50, 100))  # steps 50-99 again, then 100-149
    assert locked_writes == [1, 1]  # the version check failed, so the locking path stored it
    assert (result.accepted, result.duplicates) == (150, 150)
    for key in KEYS:
        assert steps_of(run, key) == list(range(150))
        series = MetricSeries.objects.get(run=run, key=key)
        assert (series.points, series.version) == (150, 3)
        assert MetricBlock.objects.filter(series=series).count() == 3  # nothing of the failed statement stayed
        assert postgres.series_cache[(run.pk, key)].version == 3


def test_a_batch_that_raises_an_alert_takes_the_locking_path(run, locked_writes):
    metrics_record(run=run, records=batch(0, 100))
    spike = batch(100, 1)
    spike[0]["values"]["loss"] = 50.0
    result = metrics_record(run=run, records=spike)
    assert locked_writes == [1, 1] and len(result.alerts) == 1


def test_concurrent_posts_of_known_series_store_each_step_once(run):
    metrics_record(run=run, records=batch(0))
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(start: int) -> None:
        try:
            barrier.wait(10)
            metrics_record(run=Run.objects.get(pk=run.pk), records=batch(start))
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=worker, args=(50 + 50 * (i % 4),)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for key in KEYS:
        assert steps_of(run, key) == list(range(250))
        assert MetricSeries.objects.get(run=run, key=key).points == 250


def test_a_prepared_batch_is_written_in_one_statement_and_counted_as_one_write(run, locked_writes):
    metrics_record(run=run, records=batch(0))
    ready = metrics_prepare(run=run, batch=ingest_validate(batch(50)))
    assert ready is not None and locked_writes == [1]
    (result,) = metrics_store_ready([ready])
    assert locked_writes == [1]
    assert (result.accepted, result.duplicates, result.last_step) == (150, 0, 99)
    for key in KEYS:
        assert steps_of(run, key) == list(range(100))
        assert MetricSeries.objects.get(run=run, key=key).version == 2


def test_a_batch_prepared_before_another_write_of_its_series_is_stored_again_from_the_start(run, locked_writes):
    metrics_record(run=run, records=batch(0))
    ready = metrics_prepare(run=run, batch=ingest_validate(batch(50)))
    metrics_record(run=run, records=batch(50, 100))  # lands first: steps 50-149
    (result,) = metrics_store_ready([ready])
    assert (result.accepted, result.duplicates) == (0, 150)  # every step of it was stored by then
    for key in KEYS:
        assert steps_of(run, key) == list(range(150))
        assert MetricSeries.objects.get(run=run, key=key).points == 150


def test_only_batches_of_known_series_without_events_or_alerts_are_prepared(run):
    assert metrics_prepare(run=run, batch=ingest_validate(batch(0))) is None  # series not known yet
    metrics_record(run=run, records=batch(0, 100))
    assert metrics_prepare(run=run, batch=ingest_validate(batch(50))) is None  # steps stored already
    event = [*batch(100, 1), {"kind": "event", "type": "checkpoint_saved", "step": 100, "tag": "a", "path": "/x"}]
    assert metrics_prepare(run=run, batch=ingest_validate(event)) is None
    spike = batch(100, 1)
    spike[0]["values"]["loss"] = 50.0
    assert metrics_prepare(run=run, batch=ingest_validate(spike)) is None  # an alert: the locking path
    assert metrics_prepare(run=run, batch=ingest_validate(batch(100))) is not None
