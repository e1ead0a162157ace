"""MLflow REST compatibility, so the `mlflow` client (and transformers' MLflow callback) log into one of our runs.

Tracking URI: http://HOST/api/v1/ingest/<run_id>/mlflow, token in MLFLOW_TRACKING_TOKEN (sent as Bearer); the routes,
their request models and the token check are runs.api.mlflow's. Every
experiment and run the client names under that URI is this one run: experiments/get-by-name and create answer
with an experiment whose id is the run id, runs/create answers with run id "<run_id>". Metrics go through the
same ingest service as the reporter (idempotent on key+step: MLflow's re-logging of a step keeps the first
value); params and tags are kept on the run; runs/update records the client's status and end time without moving
the run's own state, which the launcher derives from the job.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable

from runs.metrics.mlflow_records import MlflowParamConflict, run_mlflow_record
from runs.metrics.prepare import nonfinite_name
from runs.metrics.reads import series_latest, series_read
from runs.metrics.store import metrics_record
from runs.metrics.validation import IngestInvalid
from runs.models import Run, RunStatus

MAX_BATCH_METRICS = 1000  # MLflow's own limits per log-batch
MAX_BATCH_PARAMS_TAGS = 100
_KEY_FIX = re.compile(r"[^A-Za-z0-9_./-]")
STATUS_OF: dict[str, str] = {
    RunStatus.SUCCEEDED: "FINISHED",
    RunStatus.FAILED: "FAILED",
    RunStatus.CANCELLED: "KILLED",
    RunStatus.DRAFT: "SCHEDULED",
    RunStatus.QUEUED: "SCHEDULED",
}
MLFLOW_STATUSES = {"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"}


class MlflowError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code = status, code


def _bad(message: str) -> MlflowError:
    return MlflowError(400, "INVALID_PARAMETER_VALUE", message)


def metric_key(key: str) -> str:
    """MLflow allows spaces, colons and more in metric names; ours are [A-Za-z0-9_./-]{1,100}."""
    return (_KEY_FIX.sub("_", key) or "_")[:100]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _experiment(run: Run, name: str | None = None) -> dict:
    record = run.mlflow_run or {}
    return {
        "experiment_id": str(run.pk),
        "name": name or record.get("experiment_name") or f"run-{run.pk}",
        "artifact_location": _artifact_uri(run),
        "lifecycle_stage": "active",
        "tags": [],
    }


def _artifact_uri(run: Run) -> str:
    return f"file://{run.run_dir.rstrip('/')}/mlflow-artifacts" if run.run_dir else ""


def _run_info(run: Run) -> dict:
    record = run.mlflow_run or {}
    info = {
        "run_id": str(run.pk),
        "run_uuid": str(run.pk),
        "run_name": record.get("run_name") or run.name,
        "experiment_id": str(run.pk),
        "user_id": record.get("user_id") or run.owner.get_username(),
        "status": record.get("status") or STATUS_OF.get(run.status, "RUNNING"),
        "start_time": record.get("start_time") or int(run.created_at.timestamp() * 1000),
        "artifact_uri": _artifact_uri(run),
        "lifecycle_stage": "active",
    }
    if record.get("end_time"):
        info["end_time"] = record["end_time"]
    return info


def _run_json(run: Run) -> dict:
    metrics = []
    for key, value, step in series_latest(run_id=run.pk):
        if step is None:
            continue
        metrics.append({"key": key, "value": value if value is not None else "NaN", "timestamp": 0, "step": step})
    return {
        "info": _run_info(run),
        "data": {
            "metrics": metrics,
            "params": [{"key": k, "value": v} for k, v in sorted((run.mlflow_params or {}).items())],
            "tags": [{"key": k, "value": v} for k, v in sorted(((run.mlflow_run or {}).get("tags") or {}).items())],
        },
        "inputs": {},
        "outputs": {},
    }


def _check_run_id(run: Run, body: dict) -> None:
    given = body.get("run_id") or body.get("run_uuid")
    if given is not None and str(given) != str(run.pk):
        raise MlflowError(404, "RESOURCE_DOES_NOT_EXIST", f"Run '{given}' not found under this tracking URI")


def _pairs(items, what: str) -> dict[str, str]:
    if items is None:
        return {}
    if not isinstance(items, list):
        raise _bad(f"{what} must be a list of {{key, value}}")
    out = {}
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("key"), str):
            raise _bad(f"each of {what} needs a string key")
        out[item["key"]] = "" if item.get("value") is None else str(item["value"])
    return out


def _metric_value(raw) -> float:
    if isinstance(raw, bool):
        raise _bad(f"metric value {raw!r} is not a number")
    if isinstance(raw, int | float):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw)  # protobuf JSON writes "NaN", "Infinity", "-Infinity"
        except ValueError:
            pass
    raise _bad(f"metric value {raw!r} is not a number")


def _log_metrics(run: Run, metrics: list) -> None:
    if not isinstance(metrics, list):
        raise _bad("metrics must be a list")
    if len(metrics) > MAX_BATCH_METRICS:
        raise _bad(f"A batch logging request can contain at most {MAX_BATCH_METRICS} metrics; got {len(metrics)}")
    by_step: dict[int, dict[str, float | str]] = {}
    for metric in metrics:
        if not isinstance(metric, dict) or not isinstance(metric.get("key"), str):
            raise _bad("each metric needs a string key")
        try:
            step = int(metric.get("step") or 0)
        except (TypeError, ValueError):
            raise _bad(f"metric step {metric.get('step')!r} is not an integer") from None
        value = _metric_value(metric.get("value"))
        by_step.setdefault(step, {}).setdefault(
            metric_key(metric["key"]), value if math.isfinite(value) else nonfinite_name(value)
        )
    if by_step:
        records = [{"kind": "metrics", "step": s, "values": v} for s, v in sorted(by_step.items())]
        try:
            metrics_record(run=run, records=records)
        except IngestInvalid as exc:
            raise _bad(str(exc)) from None


def _record(run: Run, **kwargs) -> None:
    try:
        run_mlflow_record(run=run, **kwargs)
    except MlflowParamConflict as exc:
        raise _bad(str(exc)) from None


# Endpoints: (method, path after api/2.0/mlflow/) -> handler(run, body) -> JSON answer


def get_experiment_by_name(run: Run, body: dict) -> dict:
    name = body.get("experiment_name") or None
    if name and not (run.mlflow_run or {}).get("experiment_name"):
        _record(run, info={"experiment_name": name})
    return {"experiment": _experiment(run, name)}


def create_experiment(run: Run, body: dict) -> dict:
    if body.get("name"):
        _record(run, info={"experiment_name": str(body["name"])})
    return {"experiment_id": str(run.pk)}


def get_experiment(run: Run, body: dict) -> dict:
    return {"experiment": _experiment(run)}


def create_run(run: Run, body: dict) -> dict:
    tags = _pairs(body.get("tags"), "tags")
    info = {
        "status": "RUNNING",
        "start_time": int(body.get("start_time") or _now_ms()),
        "run_name": body.get("run_name") or tags.get("mlflow.runName"),
        "user_id": body.get("user_id"),
    }
    _record(run, tags=tags, info=info)
    return {"run": _run_json(run)}


def get_run(run: Run, body: dict) -> dict:
    _check_run_id(run, body)
    return {"run": _run_json(run)}


def update_run(run: Run, body: dict) -> dict:
    _check_run_id(run, body)
    status = body.get("status")
    if status is not None and status not in MLFLOW_STATUSES:
        raise _bad(f"status {status!r} is not one of {', '.join(sorted(MLFLOW_STATUSES))}")
    end_time = body.get("end_time")
    _record(
        run, info={"status": status, "end_time": int(end_time) if end_time else None, "run_name": body.get("run_name")}
    )
    return {"run_info": _run_info(run)}


def log_batch(run: Run, body: dict) -> dict:
    _check_run_id(run, body)
    params, tags = _pairs(body.get("params"), "params"), _pairs(body.get("tags"), "tags")
    if len(params) + len(tags) > MAX_BATCH_PARAMS_TAGS * 2:
        raise _bad(f"A batch logging request can contain at most {MAX_BATCH_PARAMS_TAGS} params and tags each")
    if params or tags:
        _record(run, params=params, tags=tags)
    _log_metrics(run, body.get("metrics") or [])
    return {}


def log_metric(run: Run, body: dict) -> dict:
    _check_run_id(run, body)
    _log_metrics(run, [body])
    return {}


def log_param(run: Run, body: dict) -> dict:
    _check_run_id(run, body)
    _record(run, params=_pairs([body], "param"))
    return {}


def set_tag(run: Run, body: dict) -> dict:
    _check_run_id(run, body)
    _record(run, tags=_pairs([body], "tag"))
    return {}


def delete_tag(run: Run, body: dict) -> dict:
    _check_run_id(run, body)
    _record(run, delete_tags=[str(body.get("key", ""))])
    return {}


def log_model(run: Run, body: dict) -> dict:
    # MLflow keeps a history of logged models in a tag; the model files themselves go to the artifact store.
    _check_run_id(run, body)
    history = json.loads(((run.mlflow_run or {}).get("tags") or {}).get("mlflow.log-model.history", "[]") or "[]")
    try:
        history.append(json.loads(body.get("model_json") or "{}"))
    except ValueError:
        raise _bad("model_json is not JSON") from None
    _record(run, tags={"mlflow.log-model.history": json.dumps(history)})
    return {}


def log_inputs(run: Run, body: dict) -> dict:
    # Dataset lineage has no home in this control plane (its data recipes are the lineage); accepted, not kept.
    _check_run_id(run, body)
    return {}


def get_metric_history(run: Run, body: dict) -> dict:
    _check_run_id(run, body)
    key = metric_key(str(body.get("metric_key") or ""))
    series = series_read(run_id=run.pk, keys=[key], max_points=10**9)["keys"][key]
    steps, values = series["steps"].tolist(), series["values"].tolist()
    return {
        "metrics": [
            {
                "key": key,
                "value": v if math.isfinite(v) else ("NaN" if math.isnan(v) else f"{'-' if v < 0 else ''}Infinity"),
                "timestamp": 0,
                "step": s,
            }
            for s, v in zip(steps, values, strict=True)
        ]
    }


ENDPOINTS: dict[tuple[str, str], Callable[[Run, dict], dict]] = {
    ("GET", "experiments/get-by-name"): get_experiment_by_name,
    ("POST", "experiments/create"): create_experiment,
    ("GET", "experiments/get"): get_experiment,
    ("POST", "runs/create"): create_run,
    ("GET", "runs/get"): get_run,
    ("POST", "runs/update"): update_run,
    ("POST", "runs/log-batch"): log_batch,
    ("POST", "runs/log-metric"): log_metric,
    ("POST", "runs/log-parameter"): log_param,
    ("POST", "runs/set-tag"): set_tag,
    ("POST", "runs/delete-tag"): delete_tag,
    ("POST", "runs/log-model"): log_model,
    ("POST", "runs/log-inputs"): log_inputs,
    ("POST", "runs/log-outputs"): log_inputs,
    ("GET", "metrics/get-history"): get_metric_history,
}
