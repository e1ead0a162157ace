"""Run tokens get their own table (runs.models.RunToken): kind, attempt, issuer, expiry and revocation.

Each run's current ingest token digest moves into a job token of the run's current attempt, so that a job running
through the upgrade keeps reporting.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def _copy_digests(apps, schema_editor) -> None:
    Run = apps.get_model("runs", "Run")
    RunToken = apps.get_model("runs", "RunToken")
    rows = [
        RunToken(run_id=pk, kind="job", attempt=attempt, digest=digest, hint="")
        for pk, attempt, digest in Run.objects.exclude(ingest_token_hash="").values_list(
            "pk", "attempt", "ingest_token_hash"
        )
    ]
    RunToken.objects.bulk_create(rows, batch_size=1000)


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0008_api_token"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="RunToken",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "kind",
                    models.CharField(
                        choices=[("job", "Job (one attempt)"), ("operator", "Operator (own script)")], max_length=16
                    ),
                ),
                ("attempt", models.PositiveIntegerField(blank=True, null=True)),
                ("digest", models.CharField(max_length=64, unique=True)),
                ("hint", models.CharField(blank=True, max_length=8)),
                ("label", models.CharField(blank=True, max_length=100)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("expires_at", models.DateTimeField(blank=True, null=True)),
                ("revoked_at", models.DateTimeField(blank=True, null=True)),
                (
                    "issued_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "revoked_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "run",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE, related_name="tokens", to="runs.run"
                    ),
                ),
            ],
            options={
                "ordering": ["-created_at", "-id"],
                "indexes": [models.Index(fields=["run", "kind"], name="runs_runtok_run_id_49beb9_idx")],
            },
        ),
        migrations.RunPython(_copy_digests, migrations.RunPython.noop),
        migrations.RemoveField(model_name="run", name="ingest_token_hash"),
    ]
