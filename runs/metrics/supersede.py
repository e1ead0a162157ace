"""Superseding points: a later attempt that restarts from the checkpoint of step c redoes steps c+1 on, so the
stored points of those steps give way to the ones it will send (idempotence on (run, key, step) would otherwise
keep the first attempt's). What was replaced stays visible: each attempt records the step it started from and the
step the one before it reached (runs.Attempt.checkpoint_step / last_step), which the run page marks on the chart.

Done under each series row's lock and compaction's advisory lock, with the series' version bumped, so an ingest
that read the row before (runs.metrics.postgres' unlocked path) goes through the locking path instead.
"""

from __future__ import annotations

import numpy as np
from django.db import connection, transaction
from django.db.models import F

from runs.metrics import rollups as ru
from runs.metrics.compaction import _block_row
from runs.models import MetricBlock, MetricSeries, Run

# runs.metrics.compaction's advisory lock key space.
_COMPACTION_LOCK = 0x6D657472


def metrics_supersede(*, run: Run, after_step: int) -> int:
    """Remove the run's stored points of steps > after_step; returns how many. The detectors start afresh."""
    removed_total = 0
    with transaction.atomic():
        series = list(
            MetricSeries.objects.select_for_update().filter(run_id=run.pk, last_step__gt=after_step).order_by("id")
        )
        for s in series:
            if connection.vendor == "postgresql":
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [_COMPACTION_LOCK, s.pk % 2**31])
            removed_total += _trim(s, after_step)
        Run.objects.filter(pk=run.pk, last_step__gt=after_step).update(last_step=after_step)
    return removed_total


def _trim(series: MetricSeries, after_step: int) -> int:
    removed = 0
    for block in MetricBlock.objects.filter(series_id=series.pk, step_hi__gt=after_step):
        if block.step_lo > after_step:
            removed += block.n
            block.delete()
            continue
        steps, values = ru.unpack_steps(bytes(block.steps)), ru.unpack_values(bytes(block.values))
        keep = steps <= after_step
        removed += int(np.count_nonzero(~keep))
        row = _block_row(series.pk, steps[keep], values[keep], block.tier)
        block.step_hi, block.n, block.vmin, block.vmax = row.step_hi, row.n, row.vmin, row.vmax
        block.steps, block.values, block.nonfinite = row.steps, row.values, row.nonfinite
        if block.tier:
            block.rollup, block.rollup_mid, block.rollup_coarse = row.rollup, row.rollup_mid, row.rollup_coarse
        block.save()
    last = MetricBlock.objects.filter(series_id=series.pk).order_by("-step_hi").first()
    last_value = None
    if last is not None:
        value = float(ru.unpack_values(bytes(last.values))[np.argmax(ru.unpack_steps(bytes(last.steps)))])
        last_value = value if np.isfinite(value) else None
    MetricSeries.objects.filter(pk=series.pk).update(
        points=F("points") - removed,
        last_step=last.step_hi if last else None,
        last_value=last_value,
        pending_blocks=MetricBlock.objects.filter(series_id=series.pk, tier=0).count(),
        detector_state={},
        detector_window=None,
        version=F("version") + 1,
    )
    return removed
