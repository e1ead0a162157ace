"""The REST API, /api/v1/: everything the pages do, for scripts and the command-line client (client/).

Generated OpenAPI 3 schema at /api/v1/openapi.json and its docs at /api/v1/docs (both behind login). Callers
authenticate with their session (writes need the CSRF token) or a personal API token (Bearer); the machine routes
(ingest, MLflow) take the run's own token. Roles are the pages' permissions; every write goes through
runs.services, which validates and audits it.
"""

from __future__ import annotations

from typing import Any

from ninja import NinjaAPI, Swagger

from runs.api import catalog, errors, machine, mlflow, oversight, runs, serving
from runs.api.auth import AUTH
from runs.api.ingest_schema import IngestBody

DESCRIPTION = __doc__.split("\n", 2)[2].strip()


class ControlPlaneAPI(NinjaAPI):
    def get_openapi_schema(self, *, path_prefix: str | None = None, path_params: Any = None):
        schema = super().get_openapi_schema(path_prefix=path_prefix, path_params=path_params)
        # The ingest body is described, not parsed, by its route (the ingest handler parses it): its models
        # join the components here.
        body = machine.ingest_body_schema()
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update({**body.pop("$defs", {}), "IngestBody": body})
        components.setdefault("securitySchemes", {})["RunToken"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "The run's ingest token (the file run.json's ingest.token_file names).",
        }
        return schema


api = ControlPlaneAPI(
    title="LLM control plane",
    version="1",
    description=DESCRIPTION,
    urls_namespace="api",
    auth=AUTH,
    docs=Swagger(settings={"persistAuthorization": False}),
    docs_url="/docs",
    openapi_url="/openapi.json",
)
errors.install(api)
api.add_router("", runs.router)
api.add_router("", serving.router)
api.add_router("", catalog.router)
api.add_router("", oversight.router)
api.add_router("", machine.router)
api.add_router("", mlflow.router)

__all__ = ["IngestBody", "api"]
