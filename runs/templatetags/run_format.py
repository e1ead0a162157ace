"""Small formats the pages share."""

from __future__ import annotations

import datetime

from django import template

register = template.Library()


@register.filter
def duration_short(value: datetime.timedelta | None) -> str:
    """1 h 05 min, 3 min 20 s, 12 s."""
    if value is None:
        return ""
    seconds = int(value.total_seconds())
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86_400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86_400} d {seconds % 86_400 // 3600} h"


@register.inclusion_tag("runs/_run_mlflow.html")
def run_mlflow(run) -> dict:
    """The run page's MLflow panel: what a script logged through the MLflow client."""
    from runs.services.mlflow_summary import mlflow_summary

    return {"run": run, "mlflow": mlflow_summary(run)}
