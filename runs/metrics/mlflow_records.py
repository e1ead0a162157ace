"""What an MLflow client logs into a run (runs.views.mlflow_compat): params (write-once, as MLflow keeps them),
tags, its run status and times, the nested child runs it starts under the run, the models it logs, and every metric
value it sends (runs.models.MlflowMetric). Values over MLflow's own limits are refused with the limit's name, never
cut; a refused request stores nothing."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db import transaction

from runs.models import MlflowMetric, Run

# MLflow's own limits (mlflow.utils.validation), so a value this server takes is one an MLflow server takes.
MAX_ENTITY_KEY_LENGTH = 250
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_RUN_NAME_LENGTH = 250
MAX_CHILD_RUNS = 1000  # nested runs under one run: a loop gone wrong is refused before the record grows unbounded
MAX_LOGGED_MODELS = 1000
PARENT_TAG = "mlflow.parentRunId"


class MlflowRefused(Exception):
    """A request refused as MLflow refuses it (error code INVALID_PARAMETER_VALUE unless said)."""

    def __init__(self, message: str, *, status: int = 400, code: str = "INVALID_PARAMETER_VALUE"):
        super().__init__(message)
        self.status, self.code = status, code


# Kept for callers of the earlier name: a changed param is one kind of refusal.
MlflowParamConflict = MlflowRefused


@dataclass(frozen=True)
class MetricValue:
    key: str
    value: float
    timestamp: int
    step: int


def now_ms() -> int:
    return int(time.time() * 1000)


def _check_length(what: str, key: str, value: str, limit: int, name: str) -> None:
    if len(value) > limit:
        raise MlflowRefused(
            f"{what} for key {key[:250]!r} had length {len(value)}, which exceeded length limit of {limit} "
            f"(MLflow's {name}); nothing was stored: shorten it, or log it as an artifact"
        )


def check_key(what: str, key: str) -> None:
    if not key:
        raise MlflowRefused(f"{what} key must not be empty")
    if len(key) > MAX_ENTITY_KEY_LENGTH:
        raise MlflowRefused(
            f"{what} key {key[:100]!r}... had length {len(key)}, which exceeded length limit of "
            f"{MAX_ENTITY_KEY_LENGTH} (MLflow's MAX_ENTITY_KEY_LENGTH); nothing was stored"
        )


def _check(params: dict[str, str], tags: dict[str, str]) -> None:
    for key, value in params.items():
        check_key("Param", key)
        _check_length("Param value", key, value, MAX_PARAM_VAL_LENGTH, "MAX_PARAM_VAL_LENGTH")
    for key, value in tags.items():
        check_key("Tag", key)
        _check_length("Tag value", key, value, MAX_TAG_VAL_LENGTH, "MAX_TAG_VAL_LENGTH")


def main_id(run: Run) -> str:
    return str(run.pk)


def child_record(run: Run, mlflow_run_id: str) -> dict[str, Any]:
    """A nested child run's record; 404 (as MLflow answers an unknown run) when the run has no such child."""
    child = ((run.mlflow_run or {}).get("children") or {}).get(mlflow_run_id)
    if child is None:
        raise MlflowRefused(
            f"Run '{mlflow_run_id}' not found under this tracking URI (it serves run {run.pk} and its nested runs)",
            status=404,
            code="RESOURCE_DOES_NOT_EXIST",
        )
    return child


def run_mlflow_record(
    *,
    run: Run,
    mlflow_run_id: str | None = None,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    delete_tags: Iterable[str] = (),
    info: dict[str, Any] | None = None,
    system_tags: dict[str, str] | None = None,
) -> Run:
    """Merge what an MLflow client logged (params, tags, its run status and times) into the record of the run, or
    of its nested child `mlflow_run_id`. `system_tags` are the ones the server keeps itself (the logged-model
    history), which MLflow does not hold to the tag limit either."""
    params = {k: str(v) for k, v in (params or {}).items()}
    tags = {k: str(v) for k, v in (tags or {}).items()}
    _check(params, tags)
    if info and info.get("run_name") and len(str(info["run_name"])) > MAX_RUN_NAME_LENGTH:
        raise MlflowRefused(f"run_name had length {len(info['run_name'])}, which exceeded length limit of 250")
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        record = dict(locked.mlflow_run or {})
        is_child = mlflow_run_id is not None and mlflow_run_id != main_id(run)
        if is_child:
            children = dict(record.get("children") or {})
            target = dict(child_record(locked, mlflow_run_id))  # type: ignore[arg-type]
            stored_params = dict(target.get("params") or {})
        else:
            target = record
            stored_params = dict(locked.mlflow_params or {})
        for key, value in params.items():
            if key in stored_params and stored_params[key] != value:
                raise MlflowRefused(
                    f"Changing param values is not allowed. Param with key={key!r} was already logged with "
                    f"value={stored_params[key]!r} for run ID={mlflow_run_id or run.pk!r}. "
                    f"Attempted logging new value {value!r}."
                )
            stored_params[key] = value
        stored_tags = dict(target.get("tags") or {})
        stored_tags.update(tags)
        stored_tags.update(system_tags or {})
        for key in delete_tags:
            stored_tags.pop(key, None)
        target["tags"] = stored_tags
        target.update({k: v for k, v in (info or {}).items() if v is not None})
        if is_child:
            target["params"] = stored_params
            children[mlflow_run_id] = target
            record["children"] = children
        main_params = locked.mlflow_params if is_child else stored_params
        Run.objects.filter(pk=run.pk).update(mlflow_params=main_params, mlflow_run=record)
    run.mlflow_run = record
    if not is_child:
        run.mlflow_params = stored_params
    return run


def run_mlflow_child_create(*, run: Run, tags: dict[str, str], info: dict[str, Any]) -> str:
    """Start a nested child run under `run` (mlflow.start_run(nested=True)): its own params, tags, metrics and
    artifacts, shown under the run. Returns its MLflow run id, "<run>-<n>"."""
    tags = {k: str(v) for k, v in tags.items()}
    _check({}, tags)
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        record = dict(locked.mlflow_run or {})
        children = dict(record.get("children") or {})
        if len(children) >= MAX_CHILD_RUNS:
            raise MlflowRefused(f"run {run.pk} already has {MAX_CHILD_RUNS} nested runs, the most it keeps")
        child_id = f"{run.pk}-{len(children) + 1}"
        children[child_id] = {
            **{k: v for k, v in info.items() if v is not None},
            "tags": tags,
            "params": {},
            "parent": str(tags.get(PARENT_TAG) or run.pk),
        }
        record["children"] = children
        Run.objects.filter(pk=run.pk).update(mlflow_run=record)
    run.mlflow_run = record
    return child_id


def mlflow_metrics_add(*, run: Run, mlflow_run_id: str, values: list[MetricValue]) -> None:
    """Keep every value, several at one step included, as MLflow's history does."""
    MlflowMetric.objects.bulk_create(
        [
            MlflowMetric(
                run=run, mlflow_run_id=mlflow_run_id, key=v.key, value=v.value, timestamp=v.timestamp, step=v.step
            )
            for v in values
        ],
        batch_size=1000,
    )


def mlflow_latest(*, run: Run, mlflow_run_id: str) -> dict[str, MlflowMetric]:
    """Each key's latest value as MLflow picks it: the highest step, then the latest timestamp, then the highest
    value."""
    latest: dict[str, MlflowMetric] = {}
    for row in MlflowMetric.objects.filter(run=run, mlflow_run_id=mlflow_run_id).order_by("id").iterator():
        best = latest.get(row.key)
        if best is None or _rank(row) >= _rank(best):
            latest[row.key] = row
    return latest


def _rank(row: MlflowMetric) -> tuple:
    value = row.value if row.value == row.value else float("-inf")  # NaN ranks lowest, as in MLflow's SQL order
    return (row.step, row.timestamp, value)


def mlflow_model_create(*, run: Run, fields: dict[str, Any]) -> dict[str, Any]:
    """A logged model (MLflow 3's LoggedModel): its record under the run, its files under the run's artifacts."""
    tags = {str(t.get("key")): str(t.get("value", "")) for t in fields.get("tags") or []}
    params = {str(p.get("key")): str(p.get("value", "")) for p in fields.get("params") or []}
    _check(params, tags)
    model_id = f"m-{uuid.uuid4().hex}"
    stamp = now_ms()
    model = {
        "model_id": model_id,
        "experiment_id": str(run.pk),
        "name": str(fields.get("name") or model_id)[:500],
        "creation_timestamp_ms": stamp,
        "last_updated_timestamp_ms": stamp,
        "status": "LOGGED_MODEL_PENDING",
        "model_type": str(fields.get("model_type") or ""),
        "source_run_id": str(fields.get("source_run_id") or ""),
        "tags": tags,
        "params": params,
    }
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        record = dict(locked.mlflow_run or {})
        models = dict(record.get("models") or {})
        if len(models) >= MAX_LOGGED_MODELS:
            raise MlflowRefused(f"run {run.pk} already has {MAX_LOGGED_MODELS} logged models, the most it keeps")
        models[model_id] = model
        record["models"] = models
        Run.objects.filter(pk=run.pk).update(mlflow_run=record)
    run.mlflow_run = record
    return model


def mlflow_model_update(
    *,
    run: Run,
    model_id: str,
    status: str | None = None,
    tags: dict[str, str] | None = None,
    delete_tag: str | None = None,
    params: dict[str, str] | None = None,
    deleted: bool = False,
) -> dict[str, Any] | None:
    """Finalize, tag, add params to or delete a logged model; None once deleted."""
    _check(params or {}, tags or {})
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        record = dict(locked.mlflow_run or {})
        models = dict(record.get("models") or {})
        if model_id not in models:
            raise MlflowRefused(
                f"Logged model with ID '{model_id}' not found under this tracking URI",
                status=404,
                code="RESOURCE_DOES_NOT_EXIST",
            )
        model = dict(models[model_id])
        if deleted:
            models.pop(model_id)
        else:
            if status:
                model["status"] = status
            model["tags"] = {**(model.get("tags") or {}), **(tags or {})}
            if delete_tag is not None:
                model["tags"].pop(delete_tag, None)
            model["params"] = {**(model.get("params") or {}), **(params or {})}
            model["last_updated_timestamp_ms"] = now_ms()
            models[model_id] = model
        record["models"] = models
        Run.objects.filter(pk=run.pk).update(mlflow_run=record)
    run.mlflow_run = record
    return None if deleted else model
