"""Merged metric blocks gain a third rollup, of ROLLUP_MID points (runs.metrics.rollups), lz4-compressed like the
others where the server has lz4 (0007). Blocks merged before it have none, and their reads use the fine rollup."""

from django.db import migrations, models


def _set_compression(method: str):
    def apply(apps, schema_editor) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        with schema_editor.connection.cursor() as cursor:
            cursor.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
            row = cursor.fetchone()
            if row and row[0]:
                cursor.execute(f"ALTER TABLE runs_metricblock ALTER COLUMN rollup_mid SET COMPRESSION {method}")

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0014_audit_keyed"),
    ]

    operations = [
        migrations.AddField(
            model_name="metricblock",
            name="rollup_mid",
            field=models.BinaryField(
                help_text="Chunk summaries of ROLLUP_MID points (blocks merged before it existed have none).",
                null=True,
            ),
        ),
        migrations.RunPython(_set_compression("lz4"), _set_compression("default")),
    ]
