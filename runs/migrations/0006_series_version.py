"""A version per series row: ingest writes a series it knows without locking it first, if the row is unchanged."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0005_ingest_storage"),
    ]

    operations = [
        migrations.AddField(
            model_name="metricseries",
            name="version",
            field=models.BigIntegerField(
                db_default=0, default=0, help_text="Bumped by every ingest that writes the row (runs.services.metrics)."
            ),
        ),
    ]
