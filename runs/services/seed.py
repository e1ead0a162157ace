"""Defaults a fresh install starts with: clusters for the three presets, the guide's data sources and mix."""

from __future__ import annotations

import os

from django.db import transaction

from jobs.common import hardware
from runs.models import BackendKind, Cluster, DataMixRecipe, DataSource
from runs.services.audit import SYSTEM, audit_record
from runs.services.recipes import recipe_create

CLUSTERS = [
    {
        "name": "local-cpu",
        "description": "This machine: training ranks as local CPU processes.",
        "backend": BackendKind.LOCAL,
        "nodes": 1,
        "gpus_per_node": 2,
        "accelerator": "cpu",
        "gpu_type": "CPU",
        "gpu_memory_gb": 8.0,
        "cpu_memory_gb_per_node": 16.0,
        "interconnect": "shared memory",
        "runnable": True,
    },
    {
        "name": "r1-h100-128x8",
        "description": "The guide's recommended cluster (plan only here).",
        "backend": BackendKind.SLURM,
        "nodes": 128,
        "gpus_per_node": 8,
        "accelerator": "cuda",
        "gpu_type": "H100",
        "gpu_memory_gb": hardware.memory_gib("H100"),
        "cpu_memory_gb_per_node": 2048.0,
        "interconnect": "NVLink3 + 400 Gbps RDMA",
        "partition": "gpu",
        "runnable": False,
    },
    {
        "name": "h200-single",
        "description": "One NVIDIA H200 (141 GB nominal; 139 GiB usable, as measured).",
        "backend": BackendKind.LOCAL,
        "nodes": 1,
        "gpus_per_node": 1,
        "accelerator": "cuda",
        "gpu_type": "H200",
        "gpu_memory_gb": hardware.memory_gib("H200"),
        "cpu_memory_gb_per_node": 128.0,
        "interconnect": "PCIe/NVLink",
        "runnable": os.path.exists("/dev/nvidia0"),
    },
]

SOURCES = [
    ("zh", "Chinese", "Chinese papers, encyclopedia and community text (sample corpus ships with the project)."),
    ("en", "English", "English web and reference text (sample corpus ships with the project)."),
    ("other", "other", "Other languages (sample corpus ships with the project)."),
]

PRESET_CLUSTERS = {"tiny": "local-cpu", "r1_guide": "r1-h100-128x8", "single_h200": "h200-single"}

DEMO_RECIPE = ("bilingual-demo", {"zh": 45, "en": 35, "other": 20})


def seed_defaults() -> None:
    """Idempotent: creates only what is missing."""
    with transaction.atomic():
        for spec in CLUSTERS:
            cluster, created = Cluster.objects.get_or_create(name=spec["name"], defaults=spec)
            if created:
                audit_record(actor=SYSTEM, action="cluster.create", obj=cluster, message="default cluster")
        for name, language, description in SOURCES:
            source, created = DataSource.objects.get_or_create(
                name=name, defaults={"language": language, "description": description}
            )
            if created:
                audit_record(actor=SYSTEM, action="datasource.create", obj=source)
        name, weights = DEMO_RECIPE
        if not DataMixRecipe.objects.filter(name=name).exists():
            recipe_create(actor=None, name=name, weights=weights, notes="The guide's mix: zh 45 / en 35 / other 20.")
