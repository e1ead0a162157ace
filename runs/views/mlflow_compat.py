"""MLflow REST compatibility, so the `mlflow` client (and transformers' MLflow callback) log into one of our runs.

Tracking URI: http://HOST/api/v1/ingest/<run_id>/mlflow, token in MLFLOW_TRACKING_TOKEN (sent as Bearer); the routes,
their request models and the token check are runs.api.mlflow's. The tracking URI serves one run: every experiment
the client names is this run (experiments/get-by-name and create answer with the run's id), runs/create answers
with the run itself, except a nested run (mlflow.start_run(nested=True), tag mlflow.parentRunId) which becomes a
child run "<run>-<n>" with its own params, tags, metrics and artifacts, shown under the run.

Metrics: every value is kept in MLflow's history (runs.models.MlflowMetric: several values at one step, step 0
when the client gives none, as MLflow does); the run's own values also go through the same ingest service as the
reporter, whose charts hold one value per step. Params and tags over MLflow's limits are refused, never cut.
runs/update records the client's status and end time without moving the run's own state, which the launcher derives
from the job.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable

from runs.metrics import mlflow_records as records
from runs.metrics.mlflow_records import MetricValue, MlflowRefused, check_key, main_id, now_ms
from runs.metrics.prepare import nonfinite_name
from runs.metrics.reads import series_latest, series_read
from runs.metrics.store import metrics_record
from runs.metrics.validation import IngestInvalid
from runs.models import MlflowMetric, Run, RunStatus
from runs.services.mlflow_artifacts import artifact_list, artifact_uri

MAX_BATCH_METRICS = 1000  # MLflow's own limits per log-batch
MAX_BATCH_PARAMS_TAGS = 100
STATUS_OF: dict[str, str] = {
    RunStatus.SUCCEEDED: "FINISHED",
    RunStatus.FAILED: "FAILED",
    RunStatus.CANCELLED: "KILLED",
    RunStatus.DRAFT: "SCHEDULED",
    RunStatus.QUEUED: "SCHEDULED",
}
MLFLOW_STATUSES = {"RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"}
MlflowError = MlflowRefused
_KEY_FIX = re.compile(r"[^A-Za-z0-9_./-]")


def _bad(message: str) -> MlflowRefused:
    return MlflowRefused(message)


def metric_key(key: str) -> str:
    """The block-store key of an MLflow metric name: ours are [A-Za-z0-9_./-]{1,100} (MLflow's history keeps the
    name as given)."""
    return (_KEY_FIX.sub("_", key) or "_")[:100]


def experiment_json(run: Run, name: str | None = None) -> dict:
    record = run.mlflow_run or {}
    created = int(run.created_at.timestamp() * 1000)
    return {
        "experiment_id": str(run.pk),
        "name": name or record.get("experiment_name") or f"run-{run.pk}",
        "artifact_location": artifact_uri(run).removesuffix("/artifacts"),
        "lifecycle_stage": "active",
        "creation_time": created,
        "last_update_time": created,
        "tags": [],
    }


def target_id(run: Run, body: dict) -> str:
    """The MLflow run a request names: the run itself (also when it names none) or one of its nested runs."""
    given = body.get("run_id") or body.get("run_uuid")
    if given is None or str(given) == main_id(run):
        return main_id(run)
    records.child_record(run, str(given))  # 404 for a run this tracking URI does not serve
    return str(given)


def _record_of(run: Run, mlflow_run_id: str) -> tuple[dict, dict]:
    """(record, params) of the run or of its nested run."""
    if mlflow_run_id == main_id(run):
        return run.mlflow_run or {}, run.mlflow_params or {}
    child = records.child_record(run, mlflow_run_id)
    return child, child.get("params") or {}


def run_info(run: Run, mlflow_run_id: str) -> dict:
    record, _ = _record_of(run, mlflow_run_id)
    is_main = mlflow_run_id == main_id(run)
    parts = () if is_main else ("children", mlflow_run_id)
    info = {
        "run_id": mlflow_run_id,
        "run_uuid": mlflow_run_id,
        "run_name": record.get("run_name") or (run.name if is_main else mlflow_run_id),
        "experiment_id": str(run.pk),
        "user_id": record.get("user_id") or run.owner.get_username(),
        "status": record.get("status") or (STATUS_OF.get(run.status, "RUNNING") if is_main else "RUNNING"),
        "start_time": record.get("start_time") or int(run.created_at.timestamp() * 1000),
        "artifact_uri": artifact_uri(run, *parts),
        "lifecycle_stage": "active",
    }
    if record.get("end_time"):
        info["end_time"] = record["end_time"]
    return info


def _json_value(v: float) -> float | str:
    if math.isfinite(v):
        return v
    return "NaN" if math.isnan(v) else f"{'-' if v < 0 else ''}Infinity"


def run_json(run: Run, mlflow_run_id: str) -> dict:
    record, params = _record_of(run, mlflow_run_id)
    latest = records.mlflow_latest(run=run, mlflow_run_id=mlflow_run_id)
    metrics = [
        {"key": m.key, "value": _json_value(m.value), "timestamp": m.timestamp, "step": m.step} for m in latest.values()
    ]
    if mlflow_run_id == main_id(run):  # what the run's own reporter logged, besides the client
        logged = {metric_key(k) for k in latest}
        for key, value, step in series_latest(run_id=run.pk):
            if step is not None and key not in logged:
                metrics.append(
                    {"key": key, "value": value if value is not None else "NaN", "timestamp": 0, "step": step}
                )
    return {
        "info": run_info(run, mlflow_run_id),
        "data": {
            "metrics": metrics,
            "params": [{"key": k, "value": v} for k, v in sorted(params.items())],
            "tags": [{"key": k, "value": v} for k, v in sorted((record.get("tags") or {}).items())],
        },
        "inputs": {},
        "outputs": {"model_outputs": record.get("outputs") or []},
    }


def mlflow_run_ids(run: Run) -> list[str]:
    return [main_id(run), *((run.mlflow_run or {}).get("children") or {})]


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


def _log_metrics(run: Run, mlflow_run_id: str, metrics: list) -> None:
    if not isinstance(metrics, list):
        raise _bad("metrics must be a list")
    if len(metrics) > MAX_BATCH_METRICS:
        raise _bad(f"A batch logging request can contain at most {MAX_BATCH_METRICS} metrics; got {len(metrics)}")
    values: list[MetricValue] = []
    for metric in metrics:
        if not isinstance(metric, dict) or not isinstance(metric.get("key"), str):
            raise _bad("each metric needs a string key")
        check_key("Metric", metric["key"])
        try:
            step = int(metric.get("step") or 0)  # MLflow's default step is 0
            stamp = int(metric.get("timestamp") or now_ms())
        except (TypeError, ValueError):
            raise _bad(f"metric step {metric.get('step')!r} or timestamp is not an integer") from None
        values.append(MetricValue(metric["key"], _metric_value(metric.get("value")), stamp, step))
    if not values:
        return
    if mlflow_run_id == main_id(run):
        # The charts' store keeps one value per step (the first it receives); the history below keeps them all.
        by_step: dict[int, dict[str, float | str]] = {}
        for v in values:
            by_step.setdefault(v.step, {}).setdefault(
                metric_key(v.key), v.value if math.isfinite(v.value) else nonfinite_name(v.value)
            )
        try:
            metrics_record(run=run, records=[{"kind": "metrics", "step": s, "values": m} for s, m in by_step.items()])
        except IngestInvalid as exc:
            raise _bad(str(exc)) from None
    records.mlflow_metrics_add(run=run, mlflow_run_id=mlflow_run_id, values=values)


# Endpoints: (method, path after api/2.0/mlflow/) -> handler(run, body) -> JSON answer


def get_experiment_by_name(run: Run, body: dict) -> dict:
    name = body.get("experiment_name") or None
    if name and not (run.mlflow_run or {}).get("experiment_name"):
        records.run_mlflow_record(run=run, info={"experiment_name": name})
    return {"experiment": experiment_json(run, name)}


def create_experiment(run: Run, body: dict) -> dict:
    if body.get("name"):
        records.run_mlflow_record(run=run, info={"experiment_name": str(body["name"])})
    return {"experiment_id": str(run.pk)}


def get_experiment(run: Run, body: dict) -> dict:
    if str(body.get("experiment_id", run.pk)) != str(run.pk):
        raise MlflowRefused(
            f"No Experiment with id={body.get('experiment_id')} exists under this tracking URI (its experiment is "
            f"{run.pk})",
            status=404,
            code="RESOURCE_DOES_NOT_EXIST",
        )
    return {"experiment": experiment_json(run)}


def create_run(run: Run, body: dict) -> dict:
    tags = _pairs(body.get("tags"), "tags")
    info = {
        "status": "RUNNING",
        "start_time": int(body.get("start_time") or now_ms()),
        "run_name": body.get("run_name") or tags.get("mlflow.runName"),
        "user_id": body.get("user_id"),
    }
    parent = tags.get(records.PARENT_TAG)
    if parent:
        if parent not in mlflow_run_ids(run):
            raise MlflowRefused(
                f"parent run {parent!r} is not served by this tracking URI", status=404, code="RESOURCE_DOES_NOT_EXIST"
            )
        child = records.run_mlflow_child_create(run=run, tags=tags, info=info)
        return {"run": run_json(run, child)}
    records.run_mlflow_record(run=run, tags=tags, info=info)
    return {"run": run_json(run, main_id(run))}


def get_run(run: Run, body: dict) -> dict:
    return {"run": run_json(run, target_id(run, body))}


def update_run(run: Run, body: dict) -> dict:
    target = target_id(run, body)
    status = body.get("status")
    if status is not None and status not in MLFLOW_STATUSES:
        raise _bad(f"status {status!r} is not one of {', '.join(sorted(MLFLOW_STATUSES))}")
    end_time = body.get("end_time")
    info = {"status": status, "end_time": int(end_time) if end_time else None, "run_name": body.get("run_name")}
    records.run_mlflow_record(run=run, mlflow_run_id=target, info=info)
    return {"run_info": run_info(run, target)}


def log_batch(run: Run, body: dict) -> dict:
    target = target_id(run, body)
    params, tags = _pairs(body.get("params"), "params"), _pairs(body.get("tags"), "tags")
    if len(params) + len(tags) > MAX_BATCH_PARAMS_TAGS * 2:
        raise _bad(f"A batch logging request can contain at most {MAX_BATCH_PARAMS_TAGS} params and tags each")
    for metric in body.get("metrics") or []:  # refuse the whole batch before anything of it is stored
        if isinstance(metric, dict) and isinstance(metric.get("key"), str):
            check_key("Metric", metric["key"])
    if params or tags:
        records.run_mlflow_record(run=run, mlflow_run_id=target, params=params, tags=tags)
    _log_metrics(run, target, body.get("metrics") or [])
    return {}


def log_metric(run: Run, body: dict) -> dict:
    _log_metrics(run, target_id(run, body), [body])
    return {}


def log_param(run: Run, body: dict) -> dict:
    records.run_mlflow_record(run=run, mlflow_run_id=target_id(run, body), params=_pairs([body], "param"))
    return {}


def set_tag(run: Run, body: dict) -> dict:
    records.run_mlflow_record(run=run, mlflow_run_id=target_id(run, body), tags=_pairs([body], "tag"))
    return {}


def delete_tag(run: Run, body: dict) -> dict:
    records.run_mlflow_record(run=run, mlflow_run_id=target_id(run, body), delete_tags=[str(body.get("key", ""))])
    return {}


def log_model(run: Run, body: dict) -> dict:
    # MLflow keeps a history of logged models in a tag; the model files themselves go to the artifact store.
    target = target_id(run, body)
    record, _ = _record_of(run, target)
    history = json.loads((record.get("tags") or {}).get("mlflow.log-model.history", "[]") or "[]")
    try:
        history.append(json.loads(body.get("model_json") or "{}"))
    except ValueError:
        raise _bad("model_json is not JSON") from None
    records.run_mlflow_record(
        run=run, mlflow_run_id=target, system_tags={"mlflow.log-model.history": json.dumps(history)}
    )
    return {}


def log_inputs(run: Run, body: dict) -> dict:
    # Dataset lineage has no home in this control plane (its data recipes are the lineage); accepted, not kept.
    target_id(run, body)
    return {}


def log_outputs(run: Run, body: dict) -> dict:
    """The logged models a run produced (mlflow 3 links each log_model to its run this way)."""
    target = target_id(run, body)
    models = body.get("models") or []
    if not isinstance(models, list) or not all(isinstance(m, dict) and m.get("model_id") for m in models):
        raise _bad("models must be a list of {model_id, step}")
    record, _ = _record_of(run, target)
    outputs = [
        *(record.get("outputs") or []),
        *({"model_id": str(m["model_id"]), "step": int(m.get("step") or 0)} for m in models),
    ]
    records.run_mlflow_record(run=run, mlflow_run_id=target, info={"outputs": outputs})
    return {}


def list_artifacts(run: Run, body: dict) -> dict:
    """The tracking API's artifact listing (the client lists through the artifact proxy; this is for others)."""
    target = target_id(run, body)
    parts = () if target == main_id(run) else ("children", target)
    root = "/".join([str(run.pk), *parts, "artifacts"])
    path = str(body.get("path") or "").strip("/")
    entries = artifact_list(run=run, path=f"{root}/{path}" if path else root)
    return {
        "root_uri": artifact_uri(run, *parts),
        "files": [
            {
                "path": f"{path}/{e.path}" if path else e.path,
                "is_dir": e.is_dir,
                **({} if e.size is None else {"file_size": e.size}),
            }
            for e in entries
        ],
    }


def get_metric_history(run: Run, body: dict) -> dict:
    target = target_id(run, body)
    key = str(body.get("metric_key") or "")
    rows = list(MlflowMetric.objects.filter(run=run, mlflow_run_id=target, key=key).order_by("step", "id"))
    if rows:
        return {
            "metrics": [
                {"key": key, "value": _json_value(r.value), "timestamp": r.timestamp, "step": r.step} for r in rows
            ]
        }
    if target != main_id(run):
        return {"metrics": []}
    # A metric the run's own reporter logged: the block store's full series.
    stored = metric_key(key)
    series = series_read(run_id=run.pk, keys=[stored], max_points=10**9)["keys"][stored]
    steps, values = series["steps"].tolist(), series["values"].tolist()
    return {
        "metrics": [
            {"key": key, "value": _json_value(v), "timestamp": 0, "step": s} for s, v in zip(steps, values, strict=True)
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
    ("POST", "runs/outputs"): log_outputs,
    ("GET", "artifacts/list"): list_artifacts,
    ("GET", "metrics/get-history"): get_metric_history,
}
