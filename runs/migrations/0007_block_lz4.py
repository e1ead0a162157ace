"""Metric blocks' arrays are compressed with lz4 where the server has it (PostgreSQL 14+ built with lz4).

Merged blocks are large enough to be TOASTed, and lz4 compresses them several times faster than PostgreSQL's default
pglz (reads decompress either). Set once per column here rather than per compaction transaction.
"""

from django.db import migrations

COLUMNS = ("steps", '"values"', "rollup", "rollup_coarse")


def _has_lz4(cursor) -> bool:
    cursor.execute("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
    row = cursor.fetchone()
    return bool(row and row[0])


def _set_compression(method: str):
    def apply(apps, schema_editor) -> None:
        if schema_editor.connection.vendor != "postgresql":
            return
        with schema_editor.connection.cursor() as cursor:
            if not _has_lz4(cursor):
                return  # nothing was set (or can be): the server's default stays
            cursor.execute(
                "ALTER TABLE runs_metricblock "
                + ", ".join(f"ALTER COLUMN {column} SET COMPRESSION {method}" for column in COLUMNS)
            )

    return apply


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0006_series_version"),
    ]

    operations = [
        migrations.RunPython(_set_compression("lz4"), _set_compression("default")),
    ]
