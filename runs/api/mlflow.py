"""MLflow's REST API (the part its client and transformers' callback use) under a run's tracking URI,
http://HOST/api/v1/ingest/<run>/mlflow, with the run's token as MLFLOW_TRACKING_TOKEN.

The request models follow MLflow's protobuf JSON (int64 fields may come as strings); each route validates its
body with its model and hands the fields given to runs.views.mlflow_compat's handler."""

from collections.abc import Callable
from typing import Annotated, Any, Literal

from django.http import FileResponse, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.urls import reverse
from ninja import Path, Query, Router, Schema
from pydantic import ConfigDict, Field

from runs.api.machine import RunTokenAuth
from runs.api.schemas import PathId
from runs.metrics.mlflow_records import MlflowRefused
from runs.metrics.validation import MAX_STEP
from runs.models import Run
from runs.services import mlflow_artifacts as artifacts
from runs.views import mlflow_compat as handlers
from runs.views import mlflow_search as search

router = Router(tags=["MLflow compatibility"], auth=RunTokenAuth())
PREFIX = "/ingest/{run_id}/mlflow/api/2.0/mlflow"
ARTIFACTS = "/ingest/{run_id}/mlflow/api/2.0/mlflow-artifacts/artifacts"
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
    key: str = Field(max_length=1000, description="At most 250 characters (MLflow's limit); longer is refused.")
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


class SearchRunsIn(MlflowIn):
    experiment_ids: list[str] = Field(default_factory=list, max_length=1000)
    filter: str | None = Field(None, max_length=10_000, description="MLflow's filter syntax.")
    run_view_type: str | None = Field(None, max_length=20)
    max_results: int | None = Field(None, description="1 to 50000 (default 1000).")
    order_by: list[str] = Field(default_factory=list, max_length=100)
    page_token: str | None = Field(None, max_length=1000)


class SearchExperimentsIn(MlflowIn):
    filter: str | None = Field(None, max_length=10_000)
    view_type: str | None = Field(None, max_length=20)
    max_results: int | None = None
    order_by: list[str] = Field(default_factory=list, max_length=100)
    page_token: str | None = Field(None, max_length=1000)


class CreateLoggedModelIn(MlflowIn):
    experiment_id: str | None = Field(None, max_length=64)
    name: str | None = Field(None, max_length=500)
    model_type: str | None = Field(None, max_length=500)
    source_run_id: str | None = Field(None, max_length=64)
    params: list[KeyValue] = Field(default_factory=list, max_length=handlers.MAX_BATCH_PARAMS_TAGS)
    tags: list[KeyValue] = Field(default_factory=list, max_length=handlers.MAX_BATCH_PARAMS_TAGS)


class FinalizeLoggedModelIn(MlflowIn):
    status: str = Field(max_length=40)


class LoggedModelTagsIn(MlflowIn):
    tags: list[KeyValue] = Field(default_factory=list, max_length=handlers.MAX_BATCH_PARAMS_TAGS)


class LoggedModelParamsIn(MlflowIn):
    params: list[KeyValue] = Field(default_factory=list, max_length=handlers.MAX_BATCH_PARAMS_TAGS)


class SearchLoggedModelsIn(MlflowIn):
    experiment_ids: list[str] = Field(default_factory=list, max_length=1000)
    filter: str | None = Field(None, max_length=10_000)
    max_results: int | None = None
    page_token: str | None = Field(None, max_length=1000)


class ArtifactListQuery(Schema):
    path: str = Field("", max_length=2000, description="'<run id>/artifacts/...', as the client sends it.")


class ModelOutput(Schema):
    model_id: str = Field(max_length=64)
    step: Int64 | None = Field(None, ge=0, le=MAX_STEP)


class LogOutputsIn(RunRef):
    models: list[ModelOutput] = Field(default_factory=list, max_length=1000)


class ArtifactsListIn(RunQuery):
    path: str | None = Field(None, max_length=2000)
    page_token: str | None = Field(None, max_length=1000)


class MlflowErrorOut(Schema):
    error_code: str
    message: str


ERRORS = {400: MlflowErrorOut, 401: MlflowErrorOut, 404: MlflowErrorOut}
ModelId = Annotated[str, Path(max_length=64, pattern=r"^m-[0-9a-f]{32}$")]
Answer = dict[str, Any]


def _refused(exc: MlflowRefused | artifacts.ArtifactRefused) -> JsonResponse:
    return JsonResponse({"error_code": exc.code, "message": str(exc)}, status=exc.status)


def _fresh(request: HttpRequest) -> Run | None:
    """The token's run as stored now (the token cache holds a snapshot)."""
    run: Run = request.auth  # type: ignore[attr-defined]
    return Run.objects.select_related("owner", "cluster").filter(pk=run.pk).first()


def _call(request: HttpRequest, handler: Callable[[Run, dict], dict], body: Schema | dict) -> JsonResponse:
    fields = body if isinstance(body, dict) else body.model_dump(exclude_unset=True)
    snapshot: Run = request.auth  # type: ignore[attr-defined]
    given = fields.get("run_id") or fields.get("run_uuid")
    if handler is handlers.log_batch and given in (None, str(snapshot.pk)):
        run: Run | None = snapshot  # the hot path: metrics of the run itself need nothing of its stored record
    else:
        run = _fresh(request)  # answers show the stored record; a nested run exists only there
    if run is None:
        return JsonResponse({"error_code": "UNAUTHENTICATED", "message": "invalid or missing run token"}, status=401)
    try:
        return JsonResponse(handler(run, fields))
    except (MlflowRefused, artifacts.ArtifactRefused) as exc:
        return _refused(exc)


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
_post("runs/outputs", handlers.log_outputs, LogOutputsIn, "The logged models the run produced")
_get("artifacts/list", handlers.list_artifacts, ArtifactsListIn, "List the run's artifacts")
_get("metrics/get-history", handlers.get_metric_history, HistoryQuery, "A metric's full history")
_post("experiments/search", search.search_experiments, SearchExperimentsIn, "Search experiments (this run's)")
_post("runs/search", search.search_runs, SearchRunsIn, "Search the run and its nested runs (MLflow's filter syntax)")
_post("logged-models/search", search.search_logged_models, SearchLoggedModelsIn, "The run's logged models")
_post("logged-models", search.create_logged_model, CreateLoggedModelIn, "Create a logged model")


@router.get(f"{PREFIX}/logged-models/{{model_id}}", response={200: Answer, **ERRORS}, summary="A logged model")
def mlflow_get_logged_model(request: HttpRequest, run_id: PathId, model_id: ModelId):
    return _call(request, search.get_logged_model, {"model_id": model_id})


@router.patch(f"{PREFIX}/logged-models/{{model_id}}", response={200: Answer, **ERRORS}, summary="Finalize a model")
def mlflow_finalize_logged_model(
    request: HttpRequest, run_id: PathId, payload: FinalizeLoggedModelIn, model_id: ModelId
):
    return _call(request, search.finalize_logged_model, {**payload.model_dump(), "model_id": model_id})


@router.delete(f"{PREFIX}/logged-models/{{model_id}}", response={200: Answer, **ERRORS}, summary="Delete a model")
def mlflow_delete_logged_model(request: HttpRequest, run_id: PathId, model_id: ModelId):
    return _call(request, search.delete_logged_model, {"model_id": model_id})


@router.patch(f"{PREFIX}/logged-models/{{model_id}}/tags", response={200: Answer, **ERRORS}, summary="Tag a model")
def mlflow_set_logged_model_tags(request: HttpRequest, run_id: PathId, payload: LoggedModelTagsIn, model_id: ModelId):
    return _call(request, search.set_logged_model_tags, {**payload.model_dump(), "model_id": model_id})


@router.delete(
    f"{PREFIX}/logged-models/{{model_id}}/tags/{{tag_key}}", response={200: Answer, **ERRORS}, summary="Untag a model"
)
def mlflow_delete_logged_model_tag(request: HttpRequest, run_id: PathId, tag_key: str, model_id: ModelId):
    return _call(request, search.delete_logged_model_tag, {"model_id": model_id, "tag_key": tag_key})


@router.post(f"{PREFIX}/logged-models/{{model_id}}/params", response={200: Answer, **ERRORS}, summary="Model params")
def mlflow_log_logged_model_params(
    request: HttpRequest, run_id: PathId, payload: LoggedModelParamsIn, model_id: ModelId
):
    return _call(request, search.log_logged_model_params, {**payload.model_dump(), "model_id": model_id})


# MLflow's artifact proxy: the client's mlflow-artifacts:/ URIs resolve below the tracking URI to these routes.


@router.get(ARTIFACTS, response={200: Answer, **ERRORS}, summary="List artifacts (MLflow's artifact proxy)")
def mlflow_artifacts_list(request: HttpRequest, run_id: PathId, query: Query[ArtifactListQuery]):
    run: Run = request.auth  # type: ignore[attr-defined]
    try:
        entries = artifacts.artifact_list(run=run, path=query.path)
    except artifacts.ArtifactRefused as exc:
        return _refused(exc)
    files = [{"path": e.path, "is_dir": e.is_dir, **({} if e.size is None else {"file_size": e.size})} for e in entries]
    return JsonResponse({"files": files})


@router.put(f"{ARTIFACTS}/{{path:artifact_path}}", response={200: Answer, **ERRORS}, summary="Upload an artifact")
def mlflow_artifact_put(request: HttpRequest, run_id: PathId, artifact_path: str):
    run: Run = request.auth  # type: ignore[attr-defined]
    try:
        artifacts.artifact_store(run=run, path=artifact_path, read=request.read)
    except artifacts.ArtifactRefused as exc:
        return _refused(exc)
    return JsonResponse({})


@router.get(f"{ARTIFACTS}/{{path:artifact_path}}", response={200: Answer, **ERRORS}, summary="Download an artifact")
def mlflow_artifact_get(request: HttpRequest, run_id: PathId, artifact_path: str):
    run: Run = request.auth  # type: ignore[attr-defined]
    try:
        found = artifacts.artifact_open(run=run, path=artifact_path)
    except artifacts.ArtifactRefused as exc:
        return _refused(exc)
    return FileResponse(found, as_attachment=True, filename=artifact_path.rsplit("/", 1)[-1])


@router.delete(f"{ARTIFACTS}/{{path:artifact_path}}", response={200: Answer, **ERRORS}, summary="Delete an artifact")
def mlflow_artifact_delete(request: HttpRequest, run_id: PathId, artifact_path: str):
    run: Run = request.auth  # type: ignore[attr-defined]
    try:
        artifacts.artifact_delete(run=run, path=artifact_path)
    except artifacts.ArtifactRefused as exc:
        return _refused(exc)
    return JsonResponse({})


# The "View run" link the client prints is "<tracking URI>/#/experiments/<id>/runs/<id>": the browser asks for the
# tracking URI itself (the fragment stays in the browser), which sends it to the run page.


@router.get("/ingest/{run_id}/mlflow", auth=None, include_in_schema=False)
def mlflow_view_run(request: HttpRequest, run_id: PathId):
    return HttpResponseRedirect(reverse("run-detail", args=[run_id]) + "#mlflow")


@router.get("/ingest/{run_id}/mlflow/", auth=None, include_in_schema=False)
def mlflow_view_run_slash(request: HttpRequest, run_id: PathId):
    return HttpResponseRedirect(reverse("run-detail", args=[run_id]) + "#mlflow")


SERVED = sorted(f"{m} {p}" for m, p in handlers.ENDPOINTS)


@router.api_operation(
    ["GET", "POST", "PUT", "PATCH", "DELETE"], "/ingest/{run_id}/mlflow/api/{path:rest}", include_in_schema=False
)
def mlflow_not_served(request: HttpRequest, run_id: PathId, rest: str) -> HttpResponse:
    """Any other MLflow route: refused by name, so a script sees what is missing instead of a bare 404."""
    return JsonResponse(
        {
            "error_code": "ENDPOINT_NOT_FOUND",
            "message": f"MLflow route {request.method} api/{rest} is not served by this control plane's tracking URI "
            "(it serves runs, experiments, metrics, params, tags, nested runs, logged models and artifacts of "
            "one run; model registry, traces, datasets and prompts are not kept here)",
        },
        status=404,
    )
