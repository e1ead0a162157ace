"""/api/v1/: the REST API (runs.api), with the machine routes (ingest, MLflow compatibility, chart reads)."""

from django.urls import path

from runs.api import api

urlpatterns = [
    path("api/v1/", api.urls),
]
