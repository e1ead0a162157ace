"""The run page's MLflow artifacts, downloaded by people (the client downloads through the artifact proxy)."""

from __future__ import annotations

from django.contrib.auth.decorators import permission_required
from django.http import FileResponse, Http404, HttpRequest, HttpResponseBadRequest
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.views.decorators.http import require_GET

from runs.models import Run
from runs.services.mlflow_artifacts import ArtifactRefused, artifact_open


@require_GET
@permission_required("runs.view_run", raise_exception=True)
def run_mlflow_artifact(request: HttpRequest, pk: int, path: str) -> HttpResponseBase:
    run = get_object_or_404(Run, pk=pk)
    try:
        found = artifact_open(run=run, path=f"{run.pk}/{path}")
    except ArtifactRefused as exc:
        if exc.status == 404:
            raise Http404(str(exc)) from None
        return HttpResponseBadRequest(str(exc))
    return FileResponse(found, as_attachment=True, filename=path.rsplit("/", 1)[-1])
