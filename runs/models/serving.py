"""Quantized artifacts of a checkpoint, the endpoints deployed from them, and their two state machines."""

from django.conf import settings
from django.db import models

from runs.models.run import Checkpoint, Run


class JobPhase(models.TextChoices):
    """A one-shot job's life (quantize, latency benchmark)."""

    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


class DeploymentStatus(models.TextChoices):
    STARTING = "starting", "Starting"
    RUNNING = "running", "Running"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


JOB_PHASE_TRANSITIONS: dict[str, frozenset[str]] = {
    JobPhase.QUEUED: frozenset({JobPhase.RUNNING, JobPhase.FAILED, JobPhase.CANCELLED}),
    JobPhase.RUNNING: frozenset({JobPhase.SUCCEEDED, JobPhase.FAILED, JobPhase.CANCELLED}),
    JobPhase.SUCCEEDED: frozenset(),
    JobPhase.FAILED: frozenset(),
    JobPhase.CANCELLED: frozenset(),
}
DEPLOYMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    DeploymentStatus.STARTING: frozenset(
        {DeploymentStatus.RUNNING, DeploymentStatus.STOPPING, DeploymentStatus.FAILED}
    ),
    DeploymentStatus.RUNNING: frozenset({DeploymentStatus.STOPPING, DeploymentStatus.FAILED}),
    DeploymentStatus.STOPPING: frozenset({DeploymentStatus.STOPPED, DeploymentStatus.FAILED}),
    DeploymentStatus.STOPPED: frozenset(),
    DeploymentStatus.FAILED: frozenset({DeploymentStatus.STOPPED}),
}


class Variant(models.TextChoices):
    BASE = "base", "Full precision (bf16)"
    NF4 = "nf4", "NF4 4-bit (double quant, bf16 compute)"
    INT8 = "int8", "int8 (LLM.int8)"


class Engine(models.TextChoices):
    NATIVE = "native", "Built-in engine (static KV cache, CUDA graphs on GPU)"
    VLLM = "vllm", "vLLM (needs vllm and a GPU on the node)"


class Artifact(models.Model):
    """One quantize job of one checkpoint: a folder with base/, nf4/ and int8/ models and a report."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artifacts")
    checkpoint = models.ForeignKey(Checkpoint, null=True, on_delete=models.SET_NULL, related_name="artifacts")
    step = models.PositiveBigIntegerField()
    tag = models.CharField(max_length=100)
    methods = models.JSONField(default=list)
    status = models.CharField(max_length=16, choices=JobPhase.choices, default=JobPhase.QUEUED, db_index=True)
    directory = models.CharField(max_length=500, blank=True)
    backend_job_id = models.CharField(max_length=100, blank=True)
    progress = models.JSONField(default=dict, blank=True)
    report = models.JSONField(default=dict, blank=True)
    failure_reason = models.TextField(blank=True)
    latency_status = models.CharField(max_length=16, choices=JobPhase.choices, blank=True)
    latency_job_id = models.CharField(max_length=100, blank=True)
    latency = models.JSONField(default=dict, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"artifact #{self.pk} of run {self.run_id} step {self.step}"

    def variants(self) -> list[str]:
        return [Variant.BASE, *[m for m in self.methods if m in Variant.values]]


class Deployment(models.Model):
    """An inference endpoint serving one variant of an artifact, started through the run's cluster backend."""

    artifact = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="deployments")
    variant = models.CharField(max_length=8, choices=Variant.choices, default=Variant.NF4)
    engine = models.CharField(max_length=8, choices=Engine.choices, default=Engine.NATIVE)
    name = models.CharField(max_length=64)
    status = models.CharField(
        max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.STARTING, db_index=True
    )
    url = models.CharField(max_length=200, blank=True)
    state_dir = models.CharField(max_length=500, blank=True)
    backend = models.CharField(max_length=16, blank=True)
    backend_job_id = models.CharField(max_length=100, blank=True)
    failure_reason = models.TextField(blank=True)
    health_failures = models.PositiveIntegerField(default=0)
    last_health_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    stopped_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        permissions = [("use_playground", "Can send prompts to a deployment")]

    def __str__(self) -> str:
        return f"deployment #{self.pk} {self.name}"

    @property
    def is_live(self) -> bool:
        return self.status in (DeploymentStatus.STARTING, DeploymentStatus.RUNNING)
