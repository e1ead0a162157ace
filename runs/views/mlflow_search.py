"""MLflow's search routes and MLflow 3's logged models, under a run's tracking URI (runs.views.mlflow_compat).

Search works on what the tracking URI serves, the run and its nested runs, with MLflow's own filter, order_by and
page-token rules (mlflow.utils.search_utils), so `mlflow.search_runs(filter_string="params.lr = '0.1'")` answers as
an MLflow server would. Logged models (what `mlflow.<flavor>.log_model` and transformers' callback with
HF_MLFLOW_LOG_ARTIFACTS=1 create) are kept in the run's record; their files go through the artifact proxy into the
run's folder under models/<model id>/.
"""

from __future__ import annotations

import json
import re

import mlflow  # noqa: F401  the package first: importing mlflow.entities first is circular in some import orders
from mlflow.entities import Experiment as MlflowExperiment
from mlflow.entities import Run as MlflowRun
from mlflow.exceptions import MlflowException
from mlflow.protos.service_pb2 import Experiment as ExperimentProto
from mlflow.protos.service_pb2 import Run as RunProto
from mlflow.utils.proto_json_utils import message_to_json, parse_dict
from mlflow.utils.search_utils import SearchExperimentsUtils, SearchUtils

from runs.metrics import mlflow_records as records
from runs.metrics.mlflow_records import MlflowRefused
from runs.models import Run
from runs.services.mlflow_artifacts import artifact_uri
from runs.views.mlflow_compat import experiment_json, mlflow_run_ids, run_json

SEARCH_MAX_RESULTS = 50000  # MLflow's own threshold
MODEL_STATUSES = {"LOGGED_MODEL_PENDING", "LOGGED_MODEL_READY", "LOGGED_MODEL_UPLOAD_FAILED"}


def _max_results(body: dict, default: int) -> int:
    raw = body.get("max_results")
    try:
        value = default if raw is None else int(raw)
    except (TypeError, ValueError):
        raise MlflowRefused(f"max_results {raw!r} is not an integer") from None
    if not 0 < value <= SEARCH_MAX_RESULTS:
        raise MlflowRefused(
            f"Invalid value {value} for parameter 'max_results' supplied. It must be a positive integer, "
            f"at most {SEARCH_MAX_RESULTS}"
        )
    return value


def _ours(run: Run, experiment_ids: list | None) -> bool:
    return not experiment_ids or str(run.pk) in [str(e) for e in experiment_ids]


def _order_by(body: dict) -> list[str]:
    order_by = body.get("order_by") or []
    return [order_by] if isinstance(order_by, str) else list(order_by)


def _text(token: str | bytes) -> str:
    return token.decode() if isinstance(token, bytes) else token


def _proto(answer: dict, message):
    parse_dict(answer, message)  # fills `message` in place
    return message


def search_runs(run: Run, body: dict) -> dict:
    max_results = _max_results(body, 1000)
    if not _ours(run, body.get("experiment_ids")):
        return {}
    if body.get("run_view_type") == "DELETED_ONLY":
        return {}  # nothing here is ever deleted
    found = [MlflowRun.from_proto(_proto(run_json(run, rid), RunProto())) for rid in mlflow_run_ids(run)]
    try:
        found = SearchUtils.filter(found, body.get("filter") or "")
        found = SearchUtils.sort(found, _order_by(body))
        page, token = SearchUtils.paginate(found, body.get("page_token"), max_results)
    except MlflowException as exc:
        raise MlflowRefused(exc.message) from None
    answer: dict = {"runs": [json.loads(message_to_json(r.to_proto())) for r in page]}
    if token:
        answer["next_page_token"] = _text(token)
    return answer


def search_experiments(run: Run, body: dict) -> dict:
    max_results = _max_results(body, 1000)
    if body.get("view_type") == "DELETED_ONLY":
        return {}
    found = [MlflowExperiment.from_proto(_proto(experiment_json(run), ExperimentProto()))]
    try:
        found = SearchExperimentsUtils.filter(found, body.get("filter") or "")
        found = SearchExperimentsUtils.sort(found, _order_by(body))
        page, token = SearchExperimentsUtils.paginate(found, body.get("page_token"), max_results)
    except MlflowException as exc:
        raise MlflowRefused(exc.message) from None
    answer: dict = {"experiments": [json.loads(message_to_json(e.to_proto())) for e in page]}
    if token:
        answer["next_page_token"] = _text(token)
    return answer


def model_json(run: Run, model: dict) -> dict:
    return {
        "info": {
            "model_id": model["model_id"],
            "experiment_id": model["experiment_id"],
            "name": model["name"],
            "creation_timestamp_ms": model["creation_timestamp_ms"],
            "last_updated_timestamp_ms": model["last_updated_timestamp_ms"],
            "artifact_uri": artifact_uri(run, "models", model["model_id"]),
            "status": model["status"],
            "creator_id": run.owner.pk,
            "model_type": model.get("model_type") or "",
            "source_run_id": model.get("source_run_id") or "",
            "tags": [{"key": k, "value": v} for k, v in sorted((model.get("tags") or {}).items())],
        },
        "data": {"params": [{"key": k, "value": v} for k, v in sorted((model.get("params") or {}).items())]},
    }


def _model(run: Run, model_id: str) -> dict:
    model = ((run.mlflow_run or {}).get("models") or {}).get(model_id)
    if model is None:
        raise MlflowRefused(
            f"Logged model with ID '{model_id}' not found under this tracking URI",
            status=404,
            code="RESOURCE_DOES_NOT_EXIST",
        )
    return model


def create_logged_model(run: Run, body: dict) -> dict:
    if str(body.get("experiment_id") or run.pk) != str(run.pk):
        raise MlflowRefused(
            f"experiment_id {body.get('experiment_id')!r} is not served by this tracking URI (its experiment is "
            f"{run.pk})",
            status=404,
            code="RESOURCE_DOES_NOT_EXIST",
        )
    source = body.get("source_run_id")
    if source and str(source) not in mlflow_run_ids(run):
        raise MlflowRefused(
            f"source_run_id {source!r} is not served by this tracking URI", status=404, code="RESOURCE_DOES_NOT_EXIST"
        )
    return {"model": model_json(run, records.mlflow_model_create(run=run, fields=body))}


def get_logged_model(run: Run, body: dict) -> dict:
    return {"model": model_json(run, _model(run, str(body["model_id"])))}


def finalize_logged_model(run: Run, body: dict) -> dict:
    status = body.get("status")
    if status not in MODEL_STATUSES:
        raise MlflowRefused(f"status {status!r} is not one of {', '.join(sorted(MODEL_STATUSES))}")
    model = records.mlflow_model_update(run=run, model_id=str(body["model_id"]), status=status)
    return {"model": model_json(run, model or {})}


def _kv(items, what: str) -> dict[str, str]:
    if not isinstance(items, list) or not all(isinstance(i, dict) and isinstance(i.get("key"), str) for i in items):
        raise MlflowRefused(f"{what} must be a list of {{key, value}}")
    return {i["key"]: "" if i.get("value") is None else str(i["value"]) for i in items}


def set_logged_model_tags(run: Run, body: dict) -> dict:
    records.mlflow_model_update(run=run, model_id=str(body["model_id"]), tags=_kv(body.get("tags") or [], "tags"))
    return {}


def delete_logged_model_tag(run: Run, body: dict) -> dict:
    records.mlflow_model_update(run=run, model_id=str(body["model_id"]), delete_tag=str(body.get("tag_key")))
    return {}


def log_logged_model_params(run: Run, body: dict) -> dict:
    records.mlflow_model_update(run=run, model_id=str(body["model_id"]), params=_kv(body.get("params") or [], "params"))
    return {}


def delete_logged_model(run: Run, body: dict) -> dict:
    records.mlflow_model_update(run=run, model_id=str(body["model_id"]), deleted=True)
    return {}


_CLAUSE = re.compile(
    r"^\s*(?:(attributes|tags|params)\.)?(?:`([^`]+)`|([\w.\-]+))\s*(=|!=)\s*'((?:[^'\\]|\\.)*)'\s*$", re.IGNORECASE
)
MODEL_ATTRIBUTES = {"name", "model_id", "source_run_id", "status", "model_type"}


def _model_filter(text: str) -> list[tuple[str, str, str, str]]:
    """The filters the client sends for logged models (`name = 'x'`, `tags.k != 'v'`, joined with AND); the full
    grammar needs SQLAlchemy, which this server does not carry, so anything else is refused by name."""
    clauses = []
    for part in re.split(r"\s+AND\s+", text.strip(), flags=re.IGNORECASE) if text.strip() else []:
        match = _CLAUSE.match(part)
        if match is None or (not match.group(1) and match.group(3) not in MODEL_ATTRIBUTES):
            raise MlflowRefused(
                f"logged-models/search: filter clause {part!r} is not supported here; use "
                f"<attribute> = '<value>' or != with attributes {', '.join(sorted(MODEL_ATTRIBUTES))}, tags.<key> "
                "or params.<key>, joined with AND"
            )
        kind, quoted, plain, op, value = match.groups()
        clauses.append(((kind or "attributes").lower(), quoted or plain, op, value))
    return clauses


def _model_matches(model: dict, clauses: list[tuple[str, str, str, str]]) -> bool:
    for kind, key, op, value in clauses:
        source = model if kind == "attributes" else (model.get(kind) or {})
        if (str(source.get(key, "")) == value) != (op == "="):
            return False
    return True


def search_logged_models(run: Run, body: dict) -> dict:
    max_results = _max_results(body, 100)
    clauses = _model_filter(body.get("filter") or "")
    if not _ours(run, body.get("experiment_ids")):
        return {"models": []}
    models = sorted(
        (m for m in ((run.mlflow_run or {}).get("models") or {}).values() if _model_matches(m, clauses)),
        key=lambda m: m["creation_timestamp_ms"],
        reverse=True,
    )
    start = SearchUtils.parse_start_offset_from_page_token(body.get("page_token"))
    answer: dict = {"models": [model_json(run, m) for m in models[start : start + max_results]]}
    if start + max_results < len(models):
        answer["next_page_token"] = _text(SearchUtils.create_page_token(start + max_results))
    return answer
