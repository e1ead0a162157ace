"""Machine and chart APIs: ingest (run token), MLflow compatibility (run token), series reads (session)."""

from django.urls import path, re_path

from runs.views import ingest, mlflow_compat, series

urlpatterns = [
    path("api/v1/ingest/<int:run_id>/", ingest.ingest, name="ingest"),
    re_path(
        r"^api/v1/ingest/(?P<run_id>[0-9]{1,18})/mlflow/(?:ajax-)?api/2\.0/mlflow/(?P<endpoint>[a-z/-]+)$",
        mlflow_compat.dispatch,
        name="mlflow-compat",
    ),
    path("api/v1/runs/<int:run_id>/series/", series.run_series, name="run-series"),
    path("api/v1/runs/<int:run_id>/keys/", series.run_keys, name="run-keys"),
    path("api/v1/series/", series.overlay_series, name="series-overlay"),
]
