"""Model instances as the API's schemas (runs.api.schemas) describe them."""

from __future__ import annotations

from typing import Any

from runs.models import (
    Alert,
    ApiToken,
    Artifact,
    AuditEvent,
    Checkpoint,
    Cluster,
    DataMixRecipe,
    DataSource,
    Deployment,
    Run,
)
from runs.services.alerts import alert_json
from runs.services.runs import launch_blocker


def _username(user: Any) -> str:
    return user.get_username() if user is not None else ""


def cluster_out(c: Cluster) -> dict:
    fields = ("id", "name", "description", "backend", "nodes", "gpus_per_node", "accelerator", "gpu_type")
    more = ("gpu_memory_gb", "cpu_memory_gb_per_node", "interconnect", "partition", "runnable")
    return {f: getattr(c, f) for f in (*fields, *more)}


def source_out(s: DataSource) -> dict:
    return {f: getattr(s, f) for f in ("id", "name", "language", "description", "shards_dir")}


def recipe_out(r: DataMixRecipe) -> dict:
    return {
        "id": r.pk,
        "name": r.name,
        "version": r.version,
        "notes": r.notes,
        "weights": r.weights(),
        "created_by": _username(r.created_by) or None,
        "created_at": r.created_at,
        "in_use": r.in_use,
    }


def run_out(run: Run, *, detail: bool = False) -> dict:
    out = {
        "id": run.pk,
        "name": run.name,
        "owner": _username(run.owner),
        "preset": run.preset,
        "trainer": run.trainer,
        "script_path": run.script_path,
        "status": run.status,
        "cluster": run.cluster.name,
        "cluster_id": run.cluster_id,
        "recipe": str(run.recipe),
        "recipe_id": run.recipe_id,
        "parent_id": run.parent_id,
        "attempt": run.attempt,
        "resume_from": run.resume_from,
        "failure_reason": run.failure_reason,
        "backend_job_id": run.backend_job_id,
        "last_step": run.last_step,
        "created_at": run.created_at,
        "queued_at": run.queued_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "launch_blocker": launch_blocker(run),
    }
    if detail:
        out["config"], out["plan"] = run.config, run.plan
    return out


def checkpoint_out(c: Checkpoint) -> dict:
    fields = ("id", "run_id", "step", "tag", "path", "size_bytes", "metrics", "created_at", "pruned_at")
    return {f: getattr(c, f) for f in fields}


def artifact_out(a: Artifact) -> dict:
    fields = ("id", "run_id", "checkpoint_id", "step", "tag", "methods", "status", "progress", "report")
    more = ("failure_reason", "latency_status", "latency", "created_at", "finished_at")
    return {
        **{f: getattr(a, f) for f in (*fields, *more)},
        "variants": a.variants(),
        "created_by": _username(a.created_by),
    }


def deployment_out(d: Deployment) -> dict:
    fields = ("id", "artifact_id", "name", "variant", "engine", "status", "url", "backend", "failure_reason")
    more = ("created_at", "started_at", "stopped_at")
    return {
        **{f: getattr(d, f) for f in (*fields, *more)},
        "run_id": d.artifact.run_id,
        "created_by": _username(d.created_by),
    }


def alert_out(a: Alert) -> dict:
    return alert_json(a)


def audit_out(e: AuditEvent) -> dict:
    fields = ("id", "created_at", "actor", "action", "object_type", "object_id", "object_repr", "run_id")
    return {f: getattr(e, f) for f in (*fields, "message", "diff", "hash")}


def token_out(t: ApiToken) -> dict:
    return {f: getattr(t, f) for f in ("id", "name", "prefix", "created_at", "last_used_at", "revoked_at")}
