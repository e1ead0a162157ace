from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class BackendKind(models.TextChoices):
    LOCAL = "local", "Local processes"
    SLURM = "slurm", "Slurm (sbatch)"
    HOSTFILE = "hostfile", "DeepSpeed launcher with a hostfile"


class Cluster(models.Model):
    name = models.SlugField(max_length=64, unique=True)
    description = models.CharField(max_length=200, blank=True)
    backend = models.CharField(max_length=16, choices=BackendKind.choices, default=BackendKind.LOCAL)
    nodes = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(100_000)])
    gpus_per_node = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(64)],
        help_text="Accelerators per node; on a CPU cluster, training ranks per node.",
    )
    accelerator = models.CharField(max_length=8, choices=[("cpu", "CPU"), ("cuda", "CUDA GPU")], default="cpu")
    gpu_type = models.CharField(max_length=32, default="CPU")
    gpu_memory_gb = models.FloatField(default=8.0, validators=[MinValueValidator(0.5), MaxValueValidator(4096)])
    cpu_memory_gb_per_node = models.FloatField(default=16.0, validators=[MinValueValidator(1)])
    interconnect = models.CharField(max_length=64, blank=True)
    partition = models.CharField(max_length=64, blank=True, help_text="Slurm partition.")
    hostfile = models.TextField(blank=True, help_text="DeepSpeed hostfile lines: 'host slots=N'.")
    runnable = models.BooleanField(
        default=True, help_text="Off for a cluster kept only for planning (no machines behind it here)."
    )
    webhook_url = models.URLField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def spec(self) -> dict:
        """The cluster section of a frozen run config."""
        return {
            "name": self.name,
            "backend": self.backend,
            "nodes": self.nodes,
            "gpus_per_node": self.gpus_per_node,
            "accelerator": self.accelerator,
            "gpu_type": self.gpu_type,
            "gpu_memory_gb": self.gpu_memory_gb,
            "cpu_memory_gb_per_node": self.cpu_memory_gb_per_node,
            "interconnect": self.interconnect,
        }
