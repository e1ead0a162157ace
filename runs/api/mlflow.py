"""MLflow's REST API (the part its client and transformers' callback use) under a run's tracking URI,
http://HOST/api/v1/ingest/<run>/mlflow, with the run's token as MLFLOW_TRACKING_TOKEN.

The request models follow MLflow's protobuf JSON (int64 fields may come as strings); each route validates its
body with its model and hands the fields given to runs.views.mlflow_compat's handler."""

from collections.abc import Callable
from typing import Any, Literal

from django.http import HttpRequest, JsonResponse
from ninja import Query, Router, Schema
from pydantic import ConfigDict, Field

from runs.api.machine import RunTokenAuth
from runs.api.schemas import PathId
from runs.metrics.validation import MAX_STEP
from runs.models import Run
from runs.views import mlflow_compat as handlers

router = Router(tags=["MLflow compatibility"], auth=RunTokenAuth())
PREFIX = "/ingest/{run_id}/mlflow/api/2.0/mlflow"
Int64 = int  # protobuf JSON writes int64 as a string; pydantic's lax mode reads "12" as 12
Timestamp = Field(None, ge=0, le=2**63 - 1, description="Milliseconds since the epoch.")


class MlflowIn(Schema):
    model_config = ConfigDict(extra="allow")  # fields of newer clients are accepted and ignored


class KeyValue(Schema):
    key: str = Field(max_length=1000)
    value: Any = None


class RunRef(MlflowIn):
    run_id: str | None = Field(None, max_length=64, description="This run's id (the tracking URI's); others 404.")
    run_uuid: str | None = Field(None, max_length=64)


class MetricIn(Schema):
    key: str = Field(max_length=1000)
    value: float = Field(description='A number; "NaN", "Infinity" and "-Infinity" as strings.')
    timestamp: Int64 | None = Timestamp
    step: Int64 | None = Field(None, ge=0, le=MAX_STEP)


class LogMetricIn(RunRef, MetricIn):
    pass


class LogBatchIn(RunRef):
    metrics: list[MetricIn] = Field(default_factory=list, max_length=handlers.MAX_BATCH_METRICS)
    params: list[KeyValue] = Field(default_factory=list, max_length=handlers.MAX_BATCH_PARAMS_TAGS)
    tags: list[KeyValue] = Field(default_factory=list, max_length=handlers.MAX_BATCH_PARAMS_TAGS)


class CreateExperimentIn(MlflowIn):
    name: str | None = Field(None, max_length=500)


class CreateRunIn(MlflowIn):
    experiment_id: str | None = Field(None, max_length=64)
    user_id: str | None = Field(None, max_length=256)
    run_name: str | None = Field(None, max_length=250)
    start_time: Int64 | None = Timestamp
    tags: list[KeyValue] = Field(default_factory=list, max_length=handlers.MAX_BATCH_PARAMS_TAGS)


class UpdateRunIn(RunRef):
    status: Literal["RUNNING", "SCHEDULED", "FINISHED", "FAILED", "KILLED"] | None = None
    end_time: Int64 | None = Timestamp
    run_name: str | None = Field(None, max_length=250)


class KeyValueIn(RunRef, KeyValue):
    pass


class DeleteTagIn(RunRef):
    key: str = Field(max_length=1000)


class LogModelIn(RunRef):
    model_json: str = Field("{}", max_length=1_000_000)


class ExperimentByName(Schema):
    experiment_name: str = Field(max_length=500)


class ExperimentById(Schema):
    experiment_id: str = Field(max_length=64)


class RunQuery(Schema):
    run_id: str | None = Field(None, max_length=64)
    run_uuid: str | None = Field(None, max_length=64)


class HistoryQuery(RunQuery):
    metric_key: str = Field(max_length=1000)


class MlflowErrorOut(Schema):
    error_code: str
    message: str


ERRORS = {400: MlflowErrorOut, 401: MlflowErrorOut, 404: MlflowErrorOut}
Answer = dict[str, Any]


def _call(request: HttpRequest, handler: Callable[[Run, dict], dict], body: Schema) -> JsonResponse:
    run: Run = request.auth  # type: ignore[attr-defined]
    if handler is not handlers.log_batch:  # the token cache holds a snapshot; these answers show the stored record
        run = Run.objects.select_related("owner", "cluster").filter(pk=run.pk).first()  # type: ignore[assignment]
        if run is None:
            return JsonResponse(
                {"error_code": "UNAUTHENTICATED", "message": "invalid or missing run token"}, status=401
            )
    try:
        return JsonResponse(handler(run, body.model_dump(exclude_unset=True)))
    except handlers.MlflowError as exc:
        return JsonResponse({"error_code": exc.code, "message": str(exc)}, status=exc.status)


def _post(path: str, handler: Callable[[Run, dict], dict], model: type[Schema], summary: str) -> None:
    def view(request: HttpRequest, run_id: PathId, payload: model):  # type: ignore[valid-type]
        return _call(request, handler, payload)

    view.__name__ = f"mlflow_{handler.__name__}_{path.replace('/', '_').replace('-', '_')}"
    router.post(f"{PREFIX}/{path}", response={200: Answer, **ERRORS}, summary=summary)(view)


def _get(path: str, handler: Callable[[Run, dict], dict], model: type[Schema], summary: str) -> None:
    def view(request: HttpRequest, run_id: PathId, query: Query[model]):  # type: ignore[valid-type]
        return _call(request, handler, query)

    view.__name__ = f"mlflow_{handler.__name__}_{path.replace('/', '_').replace('-', '_')}"
    router.get(f"{PREFIX}/{path}", response={200: Answer, **ERRORS}, summary=summary)(view)


_get("experiments/get-by-name", handlers.get_experiment_by_name, ExperimentByName, "Experiment by name (this run)")
_post("experiments/create", handlers.create_experiment, CreateExperimentIn, "Create an experiment (this run)")
_get("experiments/get", handlers.get_experiment, ExperimentById, "The experiment (this run)")
_post("runs/create", handlers.create_run, CreateRunIn, "Start the MLflow run (this run)")
_get("runs/get", handlers.get_run, RunQuery, "The run with its latest metrics, params and tags")
_post("runs/update", handlers.update_run, UpdateRunIn, "Record the client's status and end time")
_post("runs/log-batch", handlers.log_batch, LogBatchIn, "Log metrics, params and tags")
_post("runs/log-metric", handlers.log_metric, LogMetricIn, "Log one metric")
_post("runs/log-parameter", handlers.log_param, KeyValueIn, "Log one param (write-once)")
_post("runs/set-tag", handlers.set_tag, KeyValueIn, "Set a tag")
_post("runs/delete-tag", handlers.delete_tag, DeleteTagIn, "Delete a tag")
_post("runs/log-model", handlers.log_model, LogModelIn, "Record a logged model in the history tag")
_post("runs/log-inputs", handlers.log_inputs, RunRef, "Dataset inputs (accepted, not kept)")
_post("runs/log-outputs", handlers.log_inputs, RunRef, "Model outputs (accepted, not kept)")
_get("metrics/get-history", handlers.get_metric_history, HistoryQuery, "A metric's full history")
