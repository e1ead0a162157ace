"""The runs table: search, filters and sorting done by the database, then the shown page's metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import (
    DurationField,
    ExpressionWrapper,
    F,
    FilteredRelation,
    FloatField,
    Func,
    Min,
    OuterRef,
    Q,
    QuerySet,
    Subquery,
)
from django.db.models.functions import Coalesce, Now

from runs.models import MetricBlock, MetricSeries, Run, RunStatus
from runs.text import refuse_nul_params

PAGE_SIZE = 50
METRIC = "loss"  # the final and best metric the table shows and sorts by

# Sort keys the table offers: name in the URL -> the expression ordered by.
SORTS = {
    "id": "id",
    "name": "name",
    "status": "status",
    "owner": "owner__username",
    "created": "created_at",
    "duration": "duration",
    "step": "last_step",
    "final": "final_metric",
    "best": "best_metric",
}

NULLABLE_SORTS = {"duration", "step", "final", "best"}


@dataclass
class TableQuery:
    q: str = ""
    status: list[str] = field(default_factory=list)
    owner: str = ""
    tag: str = ""
    cluster: str = ""
    preset: str = ""
    archived: str = ""  # "" hides archived runs, "only" shows only them, "all" both
    sort: str = "-created"

    @classmethod
    def from_params(cls, params: Any) -> TableQuery:
        refuse_nul_params(params)
        sort = params.get("sort", "-created")
        if sort.lstrip("-") not in SORTS:
            sort = "-created"
        return cls(
            q=params.get("q", "").strip()[:200],
            status=[s for s in params.getlist("status") if s in RunStatus.values],
            owner=params.get("owner", "").strip(),
            tag=params.get("tag", "").strip()[:40],
            cluster=params.get("cluster", "").strip(),
            preset=params.get("preset", "").strip(),
            archived=params.get("archived", "") if params.get("archived", "") in ("", "only", "all") else "",
            sort=sort,
        )


def _best_metric() -> Subquery:
    """The lowest value of the run's metric: the minimum over its series' blocks, that series found by its (run, key)
    index. A plain aggregate, not one grouped by series: a grouped one let the planner, on statistics not yet
    refreshed after many runs were added, walk every series row in id order for each run (13 s for 3,333 runs)."""
    series = MetricSeries.objects.filter(run_id=OuterRef(OuterRef("pk")), key=METRIC).values("id")[:1]
    blocks = MetricBlock.objects.filter(series_id=Subquery(series)).annotate(
        best=Func(F("vmin"), function="MIN", output_field=FloatField())
    )
    return Subquery(blocks.values("best"), output_field=FloatField())


def table_queryset(query: TableQuery) -> QuerySet[Run]:
    runs = Run.objects.select_related("owner", "cluster").defer("plan")  # the table shows nothing of the plan
    if query.archived == "only":
        runs = runs.filter(archived_at__isnull=False)
    elif query.archived != "all":
        runs = runs.filter(archived_at__isnull=True)
    if query.status:
        runs = runs.filter(status__in=query.status)
    if query.owner:
        runs = runs.filter(owner__username=query.owner)
    if query.tag:
        runs = runs.filter(tags__contains=f",{query.tag},")
    if query.cluster:
        runs = runs.filter(cluster__name=query.cluster)
    if query.preset:
        runs = runs.filter(preset=query.preset)
    if query.q:
        text = query.q
        match = Q(name__icontains=text) | Q(notes__icontains=text) | Q(tags__icontains=text)
        number = text.lstrip("#")
        if number.isdigit():
            match |= Q(pk=int(number))
        runs = runs.filter(match)
    key = query.sort.lstrip("-")
    if key == "duration":
        runs = runs.annotate(
            duration=ExpressionWrapper(Coalesce("finished_at", Now()) - F("started_at"), output_field=DurationField())
        )
    elif key == "final":
        # A join on the metric's series, not a lookup per run.
        runs = runs.annotate(
            metric_series=FilteredRelation("series", condition=Q(series__key=METRIC)),
            final_metric=F("metric_series__last_value"),
        )
    elif key == "best":
        runs = runs.annotate(best_metric=_best_metric())
    column = F(SORTS[key])
    # NULLS LAST only where a value may be missing: on a column that is never null it keeps the database from
    # reading the table's index in order (newest first read the 10,000 runs and sorted them).
    nulls_last = True if key in NULLABLE_SORTS else None
    order = column.desc(nulls_last=nulls_last) if query.sort.startswith("-") else column.asc(nulls_last=nulls_last)
    return runs.order_by(order, "-id")


@dataclass
class RowMetrics:
    final: float | None = None
    best: float | None = None


def page_metrics(runs: list[Run]) -> dict[int, RowMetrics]:
    """Final and best values of the table's metric for the runs of one page: two small queries."""
    ids = [r.pk for r in runs]
    out = {pk: RowMetrics() for pk in ids}
    series = dict(MetricSeries.objects.filter(run_id__in=ids, key=METRIC).values_list("id", "run_id"))
    for series_id, last_value in MetricSeries.objects.filter(id__in=series).values_list("id", "last_value"):
        out[series[series_id]].final = last_value
    best = MetricBlock.objects.filter(series_id__in=series).values("series_id").annotate(best=Min("vmin"))
    for row in best:
        out[series[row["series_id"]]].best = row["best"]
    return out
