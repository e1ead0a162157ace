"""Prep runs: one data-preparation job of a recipe version (jobs.data.prep), its progress and its report."""

from django.conf import settings
from django.db import models

from runs.models.cluster import Cluster
from runs.models.data import DataMixRecipe
from runs.models.serving import JOB_PHASE_TRANSITIONS, JobPhase

# A failed or cancelled prep can be resumed: a new attempt in the same folder skips the tasks that finished.
PREP_TRANSITIONS: dict[str, frozenset[str]] = {
    **JOB_PHASE_TRANSITIONS,
    JobPhase.FAILED: frozenset({JobPhase.QUEUED}),
    JobPhase.CANCELLED: frozenset({JobPhase.QUEUED}),
}
# A source's count: blank before the first, and any finished count can be run again.
COUNT_TRANSITIONS: dict[str, frozenset[str]] = {
    "": frozenset({JobPhase.QUEUED}),
    **JOB_PHASE_TRANSITIONS,
    JobPhase.SUCCEEDED: frozenset({JobPhase.QUEUED}),
    JobPhase.FAILED: frozenset({JobPhase.QUEUED}),
    JobPhase.CANCELLED: frozenset({JobPhase.QUEUED}),
}


class PrepRun(models.Model):
    recipe = models.ForeignKey(DataMixRecipe, on_delete=models.PROTECT, related_name="prep_runs")
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="prep_runs")
    status = models.CharField(max_length=16, choices=JobPhase.choices, default=JobPhase.QUEUED, db_index=True)
    tasks = models.PositiveIntegerField(default=2, help_text="Tasks per parallel stage (a Slurm array's size).")
    attempt = models.PositiveIntegerField(default=1)
    directory = models.CharField(max_length=500, blank=True)
    backend = models.CharField(max_length=16, blank=True)
    backend_job_id = models.CharField(max_length=100, blank=True)
    spec = models.JSONField(default=dict, blank=True, help_text="The prep.json the job was given.")
    progress = models.JSONField(default=dict, blank=True)
    report = models.JSONField(default=dict, blank=True)
    failure_reason = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"prep #{self.pk} of {self.recipe}"

    @property
    def is_active(self) -> bool:
        return self.status in (JobPhase.QUEUED, JobPhase.RUNNING)

    @property
    def shards_dir(self) -> str:
        return str((self.report.get("output") or {}).get("shards_dir") or "")

    @property
    def tokenizer_path(self) -> str:
        return str((self.report.get("output") or {}).get("tokenizer") or "")
