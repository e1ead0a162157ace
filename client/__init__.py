"""A small Python client for the control plane's REST API (/api/v1/). Needs only httpx: it runs on a laptop.

    from client import ControlPlane
    cp = ControlPlane("http://127.0.0.1:8000", token="cpat_...")   # or CP_URL / CP_TOKEN in the environment
    run = cp.create_run("sweep-lr-2e-3", preset="tiny", overrides={"optimizer.lr": 0.002})
    cp.launch(run["id"])
    cp.wait(run["id"])

Every refusal raises ApiError with the HTTP status and the fields the server names. The command line is
`python -m client` (cpctl).
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx

__all__ = ["ApiError", "ControlPlane", "TERMINAL"]

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class ApiError(Exception):
    """A 4xx or 5xx answer: `status`, the server's `message`, and `errors` as [{field, message}]."""

    def __init__(self, status: int, message: str, errors: list[dict[str, str]] | None = None):
        super().__init__(f"{status}: {message}")
        self.status, self.message, self.errors = status, message, errors or []


def _clean(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if v is not None}


class ControlPlane:
    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        url = url or os.environ.get("CP_URL") or "http://127.0.0.1:8000"
        token = token if token is not None else os.environ.get("CP_TOKEN", "")
        headers = {"Accept": "application/json", "User-Agent": "cpctl"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self.http = httpx.Client(
            base_url=url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout, transport=transport
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> ControlPlane:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, *, params: dict | None = None, json: Any = None) -> Any:
        answer = self.http.request(method, path, params=_clean(params or {}), json=json)
        try:
            body = answer.json()
        except ValueError:
            body = {"error": answer.text[:500] or answer.reason_phrase}
        if answer.status_code >= 400:
            if not isinstance(body, dict):
                body = {"error": str(body)}
            message = body.get("error") or body.get("message") or answer.reason_phrase
            raise ApiError(answer.status_code, str(message), body.get("errors"))
        return body

    def _get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def _post(self, path: str, body: Any = None, **params: Any) -> Any:
        return self.request("POST", path, params=params, json=body if body is not None else {})

    # who am I
    def me(self) -> dict:
        return self._get("/me/")

    # runs
    def runs(self, **filters: Any) -> dict:
        """Filters: status, owner, preset, cluster, parent, q, limit, offset."""
        return self._get("/runs/", **filters)

    def run(self, run_id: int) -> dict:
        return self._get(f"/runs/{run_id}/")

    def state(self, run_id: int) -> dict:
        return self._get(f"/runs/{run_id}/state/")

    def events(self, run_id: int, limit: int = 100) -> list:
        return self._get(f"/runs/{run_id}/events/", limit=limit)

    def plan(self, preset: str = "tiny", **changes: Any) -> dict:
        """The run form's plan of a preset with changes (overrides, cluster, recipe, curriculum...); saves nothing."""
        return self._post("/runs/plan/", {"preset": preset, **_clean(changes)})

    def create_run(self, name: str, preset: str = "tiny", **changes: Any) -> dict:
        """A draft run: the preset's config with `overrides` ({"config.path": value}) and other changes."""
        return self._post("/runs/", {"name": name, "preset": preset, **_clean(changes)})

    def edit_run(self, run_id: int, **changes: Any) -> dict:
        return self.request("PATCH", f"/runs/{run_id}/", json=_clean(changes))

    def launch(self, run_id: int, fit_override_reason: str | None = None) -> dict:
        return self._post(f"/runs/{run_id}/launch/", fit_override_reason=fit_override_reason)

    def cancel(self, run_id: int, reason: str | None = None) -> dict:
        return self._post(f"/runs/{run_id}/cancel/", reason=reason)

    def fork(self, run_id: int, checkpoint_id: int | None = None, **changes: Any) -> dict:
        return self._post(f"/runs/{run_id}/fork/", _clean({"checkpoint_id": checkpoint_id, **changes}))

    def compare(self, a: int, b: int) -> dict:
        return self._get("/runs/compare/", a=a, b=b)

    def wait(self, run_id: int, *, until: frozenset[str] | set[str] = TERMINAL, timeout: float = 3600, poll: float = 2):
        """Poll the run's state until its status is one of `until`; returns the state."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.state(run_id)
            if state["status"] in until:
                return state
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} is still {state['status']} after {timeout:.0f} s")
            time.sleep(poll)

    # checkpoints, artifacts, deployments
    def checkpoints(self, run_id: int, include_pruned: bool = False) -> list:
        return self._get(f"/runs/{run_id}/checkpoints/", include_pruned=include_pruned or None)

    def retention(self, run_id: int, keep_last: int | None = None, keep_every: int | None = None) -> dict:
        return self._post(
            f"/runs/{run_id}/checkpoints/retention/", _clean({"keep_last": keep_last, "keep_every": keep_every})
        )

    def resume(self, checkpoint_id: int) -> dict:
        return self._post(f"/checkpoints/{checkpoint_id}/resume/")

    def quantize(self, checkpoint_id: int, methods: list[str] | None = None) -> dict:
        return self._post(f"/checkpoints/{checkpoint_id}/quantize/", _clean({"methods": methods}))

    def artifacts(self, run: int | None = None, limit: int | None = None) -> list:
        return self._get("/artifacts/", run=run, limit=limit)

    def artifact(self, artifact_id: int) -> dict:
        return self._get(f"/artifacts/{artifact_id}/")

    def latency(self, artifact_id: int) -> dict:
        return self._post(f"/artifacts/{artifact_id}/latency/")

    def deploy(self, artifact_id: int, variant: str = "nf4", engine: str = "native", name: str = "") -> dict:
        return self._post(f"/artifacts/{artifact_id}/deploy/", {"variant": variant, "engine": engine, "name": name})

    def deployments(self, **filters: Any) -> list:
        return self._get("/deployments/", **filters)

    def deployment(self, deployment_id: int) -> dict:
        return self._get(f"/deployments/{deployment_id}/")

    def stop_deployment(self, deployment_id: int) -> dict:
        return self._post(f"/deployments/{deployment_id}/stop/")

    # catalog
    def presets(self) -> list:
        return self._get("/presets/")

    def clusters(self) -> list:
        return self._get("/clusters/")

    def cluster(self, cluster_id: int) -> dict:
        return self._get(f"/clusters/{cluster_id}/")

    def data_sources(self) -> list:
        return self._get("/data-sources/")

    def data_source(self, source_id: int) -> dict:
        return self._get(f"/data-sources/{source_id}/")

    def recipes(self, **filters: Any) -> dict:
        """Filters: name, latest, limit, offset."""
        return self._get("/recipes/", **filters)

    def recipe(self, recipe_id: int) -> dict:
        return self._get(f"/recipes/{recipe_id}/")

    def recipe_versions(self, recipe_id: int) -> list:
        return self._get(f"/recipes/{recipe_id}/versions/")

    def create_recipe(self, name: str, weights: dict[str, float], notes: str = "") -> dict:
        return self._post("/recipes/", {"name": name, "weights": weights, "notes": notes})

    def new_recipe_version(self, recipe_id: int, weights: dict[str, float], notes: str = "") -> dict:
        return self._post(f"/recipes/{recipe_id}/versions/", {"weights": weights, "notes": notes})

    # oversight
    def alerts(self, **filters: Any) -> dict:
        """Filters: run, kind, severity, open, limit, offset."""
        return self._get("/alerts/", **filters)

    def alert(self, alert_id: int) -> dict:
        return self._get(f"/alerts/{alert_id}/")

    def audit(self, **filters: Any) -> dict:
        """Admins only. Filters: action (prefix), actor, run, limit, offset."""
        return self._get("/audit/", **filters)

    def tokens(self) -> list:
        return self._get("/tokens/")

    def create_token(self, name: str) -> dict:
        return self._post("/tokens/", {"name": name})

    def revoke_token(self, token_id: int) -> dict:
        return self.request("DELETE", f"/tokens/{token_id}/")

    # metrics
    def keys(self, run_id: int) -> dict:
        return self._get(f"/runs/{run_id}/keys/")

    def series(self, run_id: int, keys: list[str], lo: int | None = None, hi: int | None = None,
               max_points: int | None = None) -> dict:  # fmt: skip
        return self._get(f"/runs/{run_id}/series/", keys=",".join(keys), lo=lo, hi=hi, max_points=max_points)

    def overlay(self, run_ids: list[int], keys: list[str], lo: int | None = None, hi: int | None = None,
                max_points: int | None = None) -> dict:  # fmt: skip
        runs = ",".join(str(r) for r in run_ids)
        return self._get("/series/", runs=runs, keys=",".join(keys), lo=lo, hi=hi, max_points=max_points)
