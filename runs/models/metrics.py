"""Metric storage for bulk ingest: points are kept as packed arrays in blocks, not one row per point.

A series is (run, key). Each ingest batch appends one block per series: steps as little-endian int64 and values
as little-endian float64 (NaN and infinities stored as they are), with the block's step range and its finite
min/max. Millions of points per run become a few dozen rows: ingest blocks (tier 0) are merged by compaction into
blocks of tier 1, 2, ... (`TIER0_FANOUT` one-step ingest blocks, or fewer larger ones, make a tier-1 block, then
each tier is `TIER_FANOUT` times larger; `merge_due`), so a series holds O(fanout x log(points)) blocks.
Compacted blocks carry rollups: per chunk of consecutive points, the first/last step, finite min/max, last value
and count of non-finite values, so a zoomed-out chart reads kilobytes of summaries instead of every point.
Idempotence on (run, key, step) is enforced at write time (runs.metrics): every ingest either holds the row
locks of the series it writes, or writes them only if their version is the one it read, and steps already present
in an overlapping block are dropped.
"""

from django.db import models

from runs.models.run import Run


class MetricSeries(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="series")
    key = models.CharField(max_length=100)
    points = models.PositiveBigIntegerField(default=0)
    last_step = models.BigIntegerField(null=True, blank=True, help_text="Highest step stored.")
    last_value = models.FloatField(null=True, blank=True, help_text="Value at last_step (null when non-finite).")
    pending_blocks = models.PositiveIntegerField(default=0, help_text="Tier-0 blocks not yet compacted.")
    detector_state = models.JSONField(
        default=dict, blank=True, help_text="Detector episodes (runs.services.detectors)."
    )
    detector_window = models.BinaryField(
        null=True, blank=True, help_text="The detectors' last finite values, packed float64 (rewritten every ingest)."
    )
    version = models.BigIntegerField(
        default=0, db_default=0, help_text="Bumped by every ingest that writes the row (runs.services.metrics)."
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "key"], name="metric_series_run_key_unique")]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.key}"


class MetricBlock(models.Model):
    # No index of its own: the composite indexes below start with series.
    series = models.ForeignKey(MetricSeries, on_delete=models.CASCADE, related_name="blocks", db_index=False)
    step_lo = models.BigIntegerField()
    step_hi = models.BigIntegerField()
    n = models.PositiveIntegerField()
    vmin = models.FloatField(null=True)
    vmax = models.FloatField(null=True)
    steps = models.BinaryField()
    values = models.BinaryField()
    tier = models.PositiveSmallIntegerField(default=0)
    nonfinite = models.PositiveIntegerField(default=0)
    rollup = models.BinaryField(null=True, help_text="Chunk summaries of ROLLUP_FINE points (compacted blocks).")
    rollup_mid = models.BinaryField(
        null=True, help_text="Chunk summaries of ROLLUP_MID points (blocks merged before it existed have none)."
    )
    rollup_coarse = models.BinaryField(null=True, help_text="Chunk summaries of ROLLUP_COARSE points.")

    class Meta:
        indexes = [
            models.Index(fields=["series", "step_hi"]),
            models.Index(fields=["series", "step_lo"]),
            # Compaction reads a tier of a series in step order: a plain index scan, which also marks the index
            # entries of compacted-away blocks dead as it passes them (a bitmap scan would revisit them each time).
            models.Index(fields=["series", "tier", "step_lo"], name="runs_metricblock_tier_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.series_id}[{self.step_lo}..{self.step_hi}]"
