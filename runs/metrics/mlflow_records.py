"""What an MLflow client logs besides metrics (runs.views.mlflow_compat): params (write-once, as MLflow keeps
them), tags, and its run status and times, merged into the run's record."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db import transaction

from runs.models import Run


class MlflowParamConflict(Exception):
    """MLflow params are write-once: logging a different value for a logged key is refused, as MLflow does."""


MLFLOW_PARAM_MAX = 6000  # MLflow's own limit on a param value


def run_mlflow_record(
    *,
    run: Run,
    params: dict[str, str] | None = None,
    tags: dict[str, str] | None = None,
    delete_tags: Iterable[str] = (),
    info: dict[str, Any] | None = None,
) -> Run:
    """Merge what an MLflow client logged (params, tags, its run status and times) into the run's record."""
    with transaction.atomic():
        locked = Run.objects.select_for_update().get(pk=run.pk)
        stored_params = dict(locked.mlflow_params or {})
        for key, value in (params or {}).items():
            value = str(value)[:MLFLOW_PARAM_MAX]
            if key in stored_params and stored_params[key] != value:
                raise MlflowParamConflict(
                    f"Changing param values is not allowed. Param with key={key!r} was already logged with "
                    f"value={stored_params[key]!r} for run ID={run.pk!r}. Attempted logging new value {value!r}."
                )
            stored_params[key] = value
        record = dict(locked.mlflow_run or {})
        stored_tags = dict(record.get("tags") or {})
        stored_tags.update({k: str(v) for k, v in (tags or {}).items()})
        for key in delete_tags:
            stored_tags.pop(key, None)
        record["tags"] = stored_tags
        record.update({k: v for k, v in (info or {}).items() if v is not None})
        Run.objects.filter(pk=run.pk).update(mlflow_params=stored_params, mlflow_run=record)
    run.mlflow_params, run.mlflow_run = stored_params, record
    return run
