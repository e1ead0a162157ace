"""Storage for a high ingest rate.

- The run row is updated by every ingest (last step, heartbeat). With its config and plan inline it filled a page
  alone, so every update was a new page and an entry in each of its eight indexes. On PostgreSQL its large columns
  now go out of line from 128 bytes on, and pages keep room: an update stays on its page (a HOT update, no index
  entries) and the page prunes its old versions itself, with or without autovacuum.
- The detectors' rolling window of a series moves out of its JSON state into packed float64: every ingest rewrote
  64 numbers as JSON (parsed into numerics by PostgreSQL, printed back for the next read).
- Blocks get the index compaction reads by (series, tier, step order) and lose the series-only index, which the
  composite indexes cover.
"""

import django.db.models.deletion
from django.db import migrations, models


def window_out_of_state(apps, schema_editor):
    import struct

    MetricSeries = apps.get_model("runs", "MetricSeries")
    for series in MetricSeries.objects.exclude(detector_state={}).iterator():
        state = dict(series.detector_state or {})
        window = state.pop("w", None)
        if window is None:
            continue
        series.detector_window = struct.pack(f"<{len(window)}d", *window)
        series.detector_state = state
        series.save(update_fields=["detector_window", "detector_state"])


def storage_params(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE runs_run SET (toast_tuple_target = 128, fillfactor = 70)")


def storage_params_reverse(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE runs_run RESET (toast_tuple_target, fillfactor)")


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0004_serving"),
    ]

    operations = [
        migrations.AddField(
            model_name="metricseries",
            name="detector_window",
            field=models.BinaryField(
                blank=True,
                help_text="The detectors' last finite values, packed float64 (rewritten every ingest).",
                null=True,
            ),
        ),
        migrations.AlterField(
            model_name="metricseries",
            name="detector_state",
            field=models.JSONField(blank=True, default=dict, help_text="Detector episodes (runs.services.detectors)."),
        ),
        migrations.AlterField(
            model_name="metricblock",
            name="series",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="blocks",
                to="runs.metricseries",
            ),
        ),
        migrations.AddIndex(
            model_name="metricblock",
            index=models.Index(fields=["series", "tier", "step_lo"], name="runs_metricblock_tier_idx"),
        ),
        migrations.RunPython(window_out_of_state, migrations.RunPython.noop),
        migrations.RunPython(storage_params, storage_params_reverse),
    ]
