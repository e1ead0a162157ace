"""Block storage: compaction keeps every point once, rollups match the raw data, reads pick the right mode."""

from __future__ import annotations

import numpy as np
import pytest

from runs.metrics import compaction
from runs.metrics import rollups as ru
from runs.metrics.compaction import COMPACT_FANOUT, TIER0_FANOUT, TIER0_POINTS, metrics_compact
from runs.metrics.reads import series_read
from runs.metrics.store import metrics_record
from runs.models import MetricBlock, MetricSeries
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run(seeded, operator):
    return tiny_run(owner=operator)


def write(run, steps, values, key="loss", batch=50):
    steps, values = list(steps), list(values)
    for i in range(0, len(steps), batch):
        metrics_record(
            run=run,
            records=[
                {"kind": "metrics", "step": int(s), "values": {key: float(v)}}
                for s, v in zip(steps[i : i + batch], values[i : i + batch], strict=True)
            ],
        )


def tier_sizes(run, key="loss") -> dict[int, int]:
    series = MetricSeries.objects.get(run=run, key=key)
    tiers = MetricBlock.objects.filter(series=series).values_list("tier", flat=True)
    return {tier: list(tiers).count(tier) for tier in set(tiers)}


def test_one_step_blocks_wait_for_many_and_large_blocks_for_few(run, operator):
    write(run, range(TIER0_FANOUT - 1), np.ones(TIER0_FANOUT - 1), batch=1)
    assert tier_sizes(run) == {0: TIER0_FANOUT - 1}
    write(run, [TIER0_FANOUT - 1], [1.0], batch=1)
    assert tier_sizes(run) == {1: 1}

    big = tiny_run(owner=operator, name="big-batches")
    size = -(-TIER0_POINTS // COMPACT_FANOUT)
    write(big, range(size * (COMPACT_FANOUT - 1)), np.ones(size * (COMPACT_FANOUT - 1)), batch=size)
    assert tier_sizes(big) == {0: COMPACT_FANOUT - 1}
    write(big, range(size * (COMPACT_FANOUT - 1), size * COMPACT_FANOUT), np.ones(size), batch=size)
    assert tier_sizes(big) == {1: 1}


def read(run, key="loss", **kw):
    return series_read(run_id=run.pk, keys=[key], **kw)["keys"][key]


def test_compaction_merges_tiers_and_keeps_every_point_once(run, monkeypatch):
    monkeypatch.setattr(compaction, "TIER_FANOUT", COMPACT_FANOUT)  # tier 2 within a few thousand writes
    per_merge = max(COMPACT_FANOUT, -(-TIER0_POINTS // 50))  # batches of 50 steps: merged by points
    n = 50 * per_merge * COMPACT_FANOUT + 130
    values = np.sin(np.arange(n) / 50.0)
    write(run, range(n), values)
    series = MetricSeries.objects.get(run=run, key="loss")
    tiers = sorted(set(MetricBlock.objects.filter(series=series).values_list("tier", flat=True)))
    assert tiers[-1] == 2 and series.points == n and series.pending_blocks < per_merge
    assert MetricBlock.objects.filter(series=series).count() < per_merge + COMPACT_FANOUT
    full = read(run, max_points=10**6)
    assert full["mode"] == "full" and full["steps"].tolist() == list(range(n))
    assert np.array_equal(full["values"], values)
    # A replay of old batches after compaction still adds nothing.
    write(run, range(0, 500), values[:500])
    assert MetricSeries.objects.get(pk=series.pk).points == n


def test_late_points_inside_compacted_ranges(run):
    write(run, range(0, 2000, 2), np.ones(1000))
    write(run, range(1, 2000, 2), np.full(1000, 2.0))  # the odd steps arrive later, in other blocks
    for series in MetricSeries.objects.filter(run=run):
        metrics_compact(series_id=series.pk)
    full = read(run, max_points=5000)
    assert full["steps"].tolist() == list(range(2000))
    assert full["values"].tolist() == [1.0 if s % 2 == 0 else 2.0 for s in range(2000)]


def test_rollup_rows_summarise_chunks_exactly():
    steps = np.arange(1000, 1000 + 200, dtype=np.int64)
    values = np.linspace(0, 1, 200)
    values[70] = 50.0
    values[71] = np.nan
    values[150] = -7.0
    rows = ru.rollup(steps, values, 64)
    assert rows.shape == (4, ru.ROLLUP_COLS)
    assert rows[1, ru.MX] == 50.0 and rows[1, ru.MX_STEP] == 1070 and rows[1, ru.BAD] == 1
    assert rows[2, ru.MN] == -7.0 and rows[2, ru.MN_STEP] == 1150
    assert rows[3, ru.S0] == 1192 and rows[3, ru.S1] == 1199 and rows[3, ru.LAST] == values[-1]


def test_envelope_from_rollups_equals_envelope_from_points():
    rng = np.random.default_rng(3)
    steps = np.sort(rng.choice(10**6, 200_000, replace=False)).astype(np.int64)
    values = rng.standard_normal(steps.size)
    spikes = rng.choice(steps.size, 40, replace=False)
    values[spikes] = 100 + np.arange(40)
    values[rng.choice(steps.size, 5, replace=False)] = np.nan
    lo, hi = int(steps[0]), int(steps[-1])
    exact = ru.envelope(ru.points_as_rows(steps, values), lo=lo, hi=hi, buckets=500)
    summary = ru.envelope(ru.rollup(steps, values, 64), lo=lo, hi=hi, buckets=500)
    assert np.array_equal(exact.steps, summary.steps)
    assert np.array_equal(exact.max[exact.max >= 100], summary.max[summary.max >= 100])
    # "last" is the last value of the last chunk ending in a bucket: a point of the bucket, inside its band.
    ok = np.isfinite(summary.last)
    assert np.all((summary.last[ok] >= summary.min[ok]) & (summary.last[ok] <= summary.max[ok]))
    assert set(exact.nonfinite) <= set(summary.nonfinite)


def test_envelope_of_raw_points_summarised_per_bucket_equals_envelope_of_the_points():
    rng = np.random.default_rng(4)
    steps = np.sort(rng.choice(10**6, 50_000, replace=False)).astype(np.int64)
    values = rng.standard_normal(steps.size)
    values[rng.choice(steps.size, 30, replace=False)] = 100.0
    values[rng.choice(steps.size, 5, replace=False)] = np.nan
    values[7] = np.inf
    for lo, hi, buckets in ((0, 10**6 - 1, 500), (123_456, 654_321, 777), (int(steps[10]), int(steps[40]), 1000)):
        inside = (steps >= lo) & (steps <= hi)
        width = max(1, -(-(hi - lo + 1) // buckets))
        exact = ru.envelope(ru.points_as_rows(steps[inside], values[inside]), lo=lo, hi=hi, buckets=buckets)
        rows = ru.points_bucketed(steps[inside], values[inside], lo=lo, width=width)
        summary = ru.envelope(rows, lo=lo, hi=hi, buckets=buckets)
        assert rows.shape[0] == exact.steps.size  # a row per bucket that holds points
        for field in ("steps", "min", "max", "last", "nonfinite"):
            assert np.array_equal(getattr(exact, field), getattr(summary, field), equal_nan=True), field


def _spiky_series_compacted(run, *, n: int, spikes: int, seed: int, batch: int) -> list[int]:
    """An "mfu" series of n steps of noise around 2.0 with `spikes` spikes of 50, 51, ... at random steps, written in
    batches and compacted; returns the spikes' steps in order."""
    rng = np.random.default_rng(seed)
    values = 2.0 + 0.01 * rng.standard_normal(n)
    spike_steps = sorted(rng.choice(n, spikes, replace=False).tolist())
    values[spike_steps] = 50.0 + np.arange(spikes)
    write(run, range(n), values, key="mfu", batch=batch)
    for series in MetricSeries.objects.filter(run=run):
        metrics_compact(series_id=series.pk)
    return spike_steps


def test_zoomed_out_read_is_an_envelope_with_every_spike(run):
    spike_steps = _spiky_series_compacted(run, n=60_000, spikes=25, seed=5, batch=2000)
    env = read(run, key="mfu", max_points=300)
    assert env["mode"] == "envelope" and len(env["steps"]) <= 300
    width = env["bucket"]
    for i, step in enumerate(spike_steps):
        bucket = np.flatnonzero(env["steps"] == step - step % width)[0]
        assert env["max"][bucket] >= np.float32(50.0 + i)  # two spikes may share a bucket
    assert float(env["min"].min()) > 1.9
    zoom = read(run, key="mfu", lo=spike_steps[3] - 100, hi=spike_steps[3] + 100, max_points=300)
    assert zoom["mode"] == "full" and len(zoom["steps"]) == 201 and zoom["values"].max() >= 53.0
    edge = read(run, key="mfu", lo=spike_steps[3], hi=spike_steps[3] + 5000, max_points=100)
    assert edge["mode"] == "envelope" and edge["steps"][0] == spike_steps[3] and edge["max"][0] == np.float32(53.0)


def test_a_chart_of_buckets_a_thousand_steps_wide_reads_mid_rollups_and_keeps_every_spike(run):
    from runs.metrics import reads

    n = 160_000
    spike_steps = _spiky_series_compacted(run, n=n, spikes=20, seed=6, batch=5000)
    series_id = MetricSeries.objects.get(run=run, key="mfu").pk
    merged = [b for b in reads._overlapping_blocks(series_id, None, None) if b.coarse is not None]
    width = -(-n // 120)
    assert merged and all(reads._level(b, width) == ("rollup_mid", ru.ROLLUP_MID) for b in merged)
    env = read(run, key="mfu", max_points=120)
    assert env["mode"] == "envelope" and env["bucket"] == width
    for i, step in enumerate(spike_steps):
        bucket = np.flatnonzero(env["steps"] == step - step % width)[0]
        assert env["max"][bucket] >= np.float32(50.0 + i)  # two spikes may share a bucket
    assert float(env["min"].min()) > 1.9 and not np.isnan(env["min"]).any() and len(env["steps"]) == 120


def test_nonfinite_points_flag_their_buckets(run):
    values = np.ones(5000)
    values[1234] = np.nan
    values[4000] = np.inf
    write(run, range(5000), values, batch=1000)
    env = read(run, max_points=50)
    flagged = env["steps"][env["nonfinite"]].tolist()
    assert flagged == [1200, 4000] and env["bucket"] == 100
    assert float(env["max"].max()) == 1.0  # infinities are flagged, not drawn


def test_block_arrays_are_lz4_compressed_where_postgresql_has_lz4():
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("column compression is PostgreSQL's")
    with connection.cursor() as cursor:
        cursor.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
        row = cursor.fetchone()
        if not (row and row[0]):
            pytest.skip("this PostgreSQL has no lz4")
        cursor.execute(
            "SELECT attname, attcompression FROM pg_attribute WHERE attrelid = 'runs_metricblock'::regclass "
            "AND attname IN ('steps', 'values', 'rollup', 'rollup_mid', 'rollup_coarse')"
        )
        assert dict(cursor.fetchall()) == {
            "steps": "l",
            "values": "l",
            "rollup": "l",
            "rollup_mid": "l",
            "rollup_coarse": "l",
        }


def test_ingest_connections_plan_their_row_lookups_by_index_and_only_outside_a_transaction():
    from django.db import connection, transaction

    from runs.metrics.sql import ingest_connection_setup

    if connection.vendor != "postgresql":
        pytest.skip("planner settings are PostgreSQL's")

    def settings() -> list[str]:
        with connection.cursor() as cursor:
            return [
                cursor.execute(f"SHOW {name}").fetchone()[0]
                for name in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin")
            ]

    connection.close()
    with transaction.atomic():
        ingest_connection_setup()  # a rollback would undo it: left for later
        assert settings() == ["on", "on", "on"]
    ingest_connection_setup()
    assert settings() == ["off", "off", "off"]
    connection.close()  # a new connection (another thread's, say) is as the server's defaults
    assert settings() == ["on", "on", "on"]
