"""Metric storage for bulk ingest: points are kept as packed arrays in blocks, not one row per point.

A series is (run, key). Each ingest batch appends one block per series: steps as little-endian int64 and values
as little-endian float64, with the block's step range and min/max. Millions of points per run become thousands of
rows; an ingest is one INSERT per key; a chart read decodes a few blobs with numpy. Idempotence on
(run, key, step) is enforced at write time: steps already present in an overlapping block are dropped, under a
row lock on the series so two concurrent writers cannot both add the same step.
"""

from django.db import models

from runs.models.run import Run


class MetricSeries(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="series")
    key = models.CharField(max_length=100)
    points = models.PositiveBigIntegerField(default=0)
    last_step = models.BigIntegerField(null=True, blank=True)
    last_value = models.FloatField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "key"], name="metric_series_run_key_unique")]

    def __str__(self) -> str:
        return f"{self.run_id}:{self.key}"


class MetricBlock(models.Model):
    series = models.ForeignKey(MetricSeries, on_delete=models.CASCADE, related_name="blocks")
    step_lo = models.BigIntegerField()
    step_hi = models.BigIntegerField()
    n = models.PositiveIntegerField()
    vmin = models.FloatField(null=True)
    vmax = models.FloatField(null=True)
    steps = models.BinaryField()
    values = models.BinaryField()

    class Meta:
        indexes = [models.Index(fields=["series", "step_hi"]), models.Index(fields=["series", "step_lo"])]

    def __str__(self) -> str:
        return f"{self.series_id}[{self.step_lo}..{self.step_hi}]"
