"""What an MLflow client logged into a run, as the run page and the compare page show it: its params and tags,
each metric's latest value (MLflow's rule) with how many values were kept, its nested runs, logged models and
artifact files."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Count

from runs.metrics.mlflow_records import mlflow_latest
from runs.models import MlflowMetric, Run
from runs.services.mlflow_artifacts import artifact_walk

SYSTEM_TAGS = {"mlflow.log-model.history"}  # kept for the client; long JSON, not for reading on a page


@dataclass(frozen=True)
class LatestMetric:
    key: str
    value: float
    step: int
    values: int  # how many values the history keeps for the key


@dataclass
class MlflowRunView:
    run_id: str
    name: str
    status: str
    params: list[tuple[str, str]]
    tags: list[tuple[str, str]]
    metrics: list[LatestMetric]


@dataclass
class MlflowSummary:
    experiment: str
    main: MlflowRunView
    children: list[MlflowRunView] = field(default_factory=list)
    models: list[dict] = field(default_factory=list)
    artifacts: list[tuple[str, int]] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.main.params or self.main.tags or self.main.metrics or self.children or self.artifacts)


def _view(run: Run, run_id: str, record: dict, params: dict) -> MlflowRunView:
    latest = mlflow_latest(run=run, mlflow_run_id=run_id)
    counts = dict(
        MlflowMetric.objects.filter(run=run, mlflow_run_id=run_id)
        .values("key")
        .annotate(n=Count("id"))
        .values_list("key", "n")
    )
    return MlflowRunView(
        run_id=run_id,
        name=str(record.get("run_name") or run_id),
        status=str(record.get("status") or ""),
        params=sorted(params.items()),
        tags=sorted((k, v) for k, v in (record.get("tags") or {}).items() if k not in SYSTEM_TAGS),
        metrics=[LatestMetric(k, m.value, m.step, counts.get(k, 0)) for k, m in sorted(latest.items())],
    )


def mlflow_summary(run: Run) -> MlflowSummary:
    record = run.mlflow_run or {}
    children = record.get("children") or {}
    return MlflowSummary(
        experiment=str(record.get("experiment_name") or ""),
        main=_view(run, str(run.pk), record, run.mlflow_params or {}),
        children=[_view(run, cid, child, child.get("params") or {}) for cid, child in children.items()],
        models=sorted((record.get("models") or {}).values(), key=lambda m: m["creation_timestamp_ms"]),
        artifacts=artifact_walk(run),
    )


def mlflow_rows(runs: list[Run]) -> list[tuple[str, list[str | None], bool]]:
    """The compare page's MLflow rows: (params.<key> or tags.<key>, value per run, whether they differ); rows that
    differ come first."""
    keyed = [
        {
            **{f"params.{k}": v for k, v in (r.mlflow_params or {}).items()},
            **{f"tags.{k}": v for k, v in ((r.mlflow_run or {}).get("tags") or {}).items() if k not in SYSTEM_TAGS},
        }
        for r in runs
    ]
    rows = []
    for key in sorted(set().union(*keyed)) if keyed else []:
        values = [k.get(key) for k in keyed]
        rows.append((key, values, any(v != values[0] for v in values[1:])))
    return sorted(rows, key=lambda row: not row[2])
