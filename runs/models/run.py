from django.conf import settings
from django.db import models

from runs.models.cluster import Cluster
from runs.models.data import DataMixRecipe


class RunStatus(models.TextChoices):
    DRAFT = "draft", "Draft"
    QUEUED = "queued", "Queued"
    LAUNCHING = "launching", "Launching"
    RUNNING = "running", "Running"
    REMEDIATING = "remediating", "Remediating"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


# The only moves a run can make; runs.services.transitions.transition enforces them.
ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    RunStatus.DRAFT: frozenset({RunStatus.QUEUED, RunStatus.CANCELLED}),
    RunStatus.QUEUED: frozenset({RunStatus.LAUNCHING, RunStatus.CANCELLED, RunStatus.FAILED}),
    RunStatus.LAUNCHING: frozenset({RunStatus.RUNNING, RunStatus.FAILED, RunStatus.CANCELLED}),
    RunStatus.RUNNING: frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.REMEDIATING}),
    RunStatus.REMEDIATING: frozenset({RunStatus.QUEUED, RunStatus.FAILED, RunStatus.CANCELLED}),
    # An ended run is queued again only as its next attempt (runs.services.attempts.run_relaunch: resume).
    RunStatus.SUCCEEDED: frozenset({RunStatus.QUEUED}),
    RunStatus.FAILED: frozenset({RunStatus.REMEDIATING, RunStatus.QUEUED}),
    RunStatus.CANCELLED: frozenset({RunStatus.QUEUED}),
}
TERMINAL_STATUSES = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED})
ACTIVE_STATUSES = frozenset({RunStatus.QUEUED, RunStatus.LAUNCHING, RunStatus.RUNNING, RunStatus.REMEDIATING})


class Trainer(models.TextChoices):
    REFERENCE = "reference", "Reference trainer (jobs.train)"
    OWN_SCRIPT = "own_script", "My own DeepSpeed script"
    PLAN_ONLY = "plan_only", "Plan only (not launched)"


class Run(models.Model):
    name = models.CharField(max_length=100)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="runs")
    preset = models.CharField(max_length=32)
    trainer = models.CharField(max_length=16, choices=Trainer.choices, default=Trainer.REFERENCE)
    script_path = models.CharField(max_length=500, blank=True)
    config = models.JSONField(help_text="Frozen run config (docs/run-config.md).")
    plan = models.JSONField(default=dict)
    recipe = models.ForeignKey(DataMixRecipe, on_delete=models.PROTECT, related_name="runs")
    cluster = models.ForeignKey(Cluster, on_delete=models.PROTECT, related_name="runs")
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.DRAFT, db_index=True)
    backend_job_id = models.CharField(max_length=100, blank=True)
    run_dir = models.CharField(max_length=500, blank=True)
    failure_reason = models.TextField(blank=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    attempt = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Written by ingest (runs.metrics): liveness for the hang watcher and progress for the pages.
    last_heartbeat_at = models.DateTimeField(null=True, blank=True)
    last_step = models.BigIntegerField(null=True, blank=True)
    # What an MLflow client logged through the compatibility API (runs.views.mlflow_compat): its params, and its
    # run record (tags, status, start/end time, run name) kept apart from this run's own state machine.
    mlflow_params = models.JSONField(default=dict, blank=True)
    mlflow_run = models.JSONField(default=dict, blank=True)
    # A checkpoint folder (possibly of the parent run) the trainer starts from: the resume button.
    resume_from = models.CharField(max_length=500, blank=True)
    # What people add to find and explain runs in the runs table; archived runs leave the default view.
    # Tags are kept as ",a,b," so that one tag is found with a plain substring match on every database.
    tags = models.CharField(max_length=600, blank=True)
    notes = models.TextField(blank=True)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [
            ("launch_run", "Can launch a run"),
            ("cancel_run", "Can cancel a run"),
            ("view_audit", "Can browse the whole audit trail"),
        ]
        indexes = [
            models.Index(fields=["owner", "status"]),
            # The runs table's default view: unarchived runs, newest first.
            models.Index(fields=["archived_at", "-created_at"], name="run_table_idx"),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.name}"

    @property
    def tag_list(self) -> list[str]:
        return [t for t in self.tags.split(",") if t]

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


class Checkpoint(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    step = models.PositiveBigIntegerField()
    tag = models.CharField(max_length=100)
    path = models.CharField(max_length=500)
    size_bytes = models.PositiveBigIntegerField(default=0)
    metrics = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    # Set when the retention policy removed the folder; the row stays so history and audit keep their target.
    pruned_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["run", "-step"]
        constraints = [models.UniqueConstraint(fields=["run", "step"], name="checkpoint_run_step_unique")]

    def __str__(self) -> str:
        return f"run {self.run_id} step {self.step}"


class AlertKind(models.TextChoices):
    NAN = "nan", "NaN/Inf loss"
    LOSS_SPIKE = "loss_spike", "Loss spike"
    GRAD_NORM = "grad_norm", "Grad-norm blow-up"
    OOM = "oom", "Out of memory"
    NCCL = "nccl", "Collective error"
    HANG = "hang", "Hang (no heartbeat)"
    THROUGHPUT = "throughput", "Throughput drop"
    JOB_LOST = "job_lost", "Job lost by the scheduler"
    JOB_FAILED = "job_failed", "Job failed"
    ENDPOINT_DOWN = "endpoint_down", "Inference endpoint down"


class Severity(models.TextChoices):
    INFO = "info", "Info"
    WARNING = "warning", "Warning"
    CRITICAL = "critical", "Critical"


class Alert(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="alerts")
    kind = models.CharField(max_length=16, choices=AlertKind.choices)
    severity = models.CharField(max_length=8, choices=Severity.choices, default=Severity.WARNING)
    step = models.BigIntegerField(null=True, blank=True)
    message = models.CharField(max_length=300)
    evidence = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    # An alert is open until its episode ends (resolved_at set); at most one open alert per run, kind and attempt,
    # which the database enforces so that concurrent detectors in several processes raise it once.
    attempt = models.PositiveIntegerField(default=1)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["run", "kind"])]
        constraints = [
            models.UniqueConstraint(
                fields=["run", "kind", "attempt"],
                condition=models.Q(resolved_at__isnull=True),
                name="alert_one_open_per_episode",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} at step {self.step}"
