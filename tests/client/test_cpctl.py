"""The Python client and `python -m client` against the real stack (uvicorn + Celery worker): what a script on a
laptop does, with an operator's API token."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from client import ApiError, ControlPlane
from tests.stack import ROOT, start_stack, stop_stack

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stack(tmp_path, seeded, operator, viewer):
    stack = start_stack(tmp=tmp_path)
    yield stack
    stop_stack(stack)
    print(stack.log_tail(80))  # shown by pytest only when the test failed


@pytest.fixture
def op_token(operator):
    from runs.services.api_tokens import api_token_create

    return api_token_create(user=operator, name="laptop").secret


def cpctl(stack, token: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DATABASE", "CP_"))}
    env.update(CP_URL=stack.url, CP_TOKEN=token)
    return subprocess.run(
        [sys.executable, "-m", "client", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_client_imports_nothing_but_httpx_and_the_standard_library():
    probe = (
        "import sys, client, client.__main__; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'django', 'runs', 'workers', 'controlplane', 'jobs', 'ninja', 'pydantic', 'numpy', 'torch'}); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_script_plans_creates_launches_forks_and_cancels_runs(stack, op_token):
    from runs.models import AuditEvent, Run

    with ControlPlane(stack.url, op_token) as cp:
        assert cp.me()["role"] == "operator"
        assert {p["name"] for p in cp.presets()} >= {"tiny", "r1_guide"}
        assert "local-cpu" in {c["name"] for c in cp.clusters()}
        sources = [s["name"] for s in cp.data_sources()]
        recipe = cp.create_recipe("cli-mix", {sources[0]: 100}, notes="from the client")
        second = cp.new_recipe_version(recipe["id"], {sources[0]: 50, sources[1]: 50})
        assert second["version"] == 2 and len(cp.recipe_versions(recipe["id"])) == 2
        plan = cp.plan("r1_guide")
        assert plan["plan"]["params"]
        with pytest.raises(ApiError) as refused:
            cp.create_run("bad", overrides={"parallel.tp": 0})
        assert refused.value.status == 400 and refused.value.errors[0]["field"] == "overrides.parallel.tp"
        run = cp.create_run(
            "client-run", overrides={"training.token_budget": 2048 * 400}, recipe="cli-mix", curriculum="0:32, 3:64"
        )
        assert run["status"] == "draft" and run["recipe"] == "cli-mix v2"
        cp.launch(run["id"])
        state = cp.wait(run["id"], until={"launching", "running", "failed"}, timeout=120, poll=0.5)
        assert state["status"] in ("launching", "running"), state
        fork = cp.fork(run["id"], overrides={"optimizer.lr": 0.01})
        assert fork["parent_id"] == run["id"] and cp.compare(run["id"], fork["id"])["diff"]
        cp.cancel(run["id"], reason="done testing")
        assert cp.wait(run["id"], timeout=60, poll=0.5)["status"] == "cancelled"
        assert cp.runs(parent=run["id"])["items"][0]["id"] == fork["id"]
        assert cp.checkpoints(run["id"]) == [] and cp.alerts(run=run["id"])["count"] == 0
        assert cp.keys(run["id"])["run_id"] == run["id"]
        with pytest.raises(ApiError) as missing:
            cp.quantize(10**9)
        assert missing.value.status == 404
        with pytest.raises(ApiError) as not_admin:
            cp.audit()
        assert not_admin.value.status == 403
    actions = set(AuditEvent.objects.filter(actor="otto").values_list("action", flat=True))
    assert {"recipe.create", "recipe.new_version", "run.create", "run.launch", "run.cancel"} <= actions
    assert Run.objects.get(pk=run["id"]).status == "cancelled"


def test_the_command_line_prints_json_and_names_refused_fields(stack, op_token, viewer):
    from runs.services.api_tokens import api_token_create

    created = cpctl(
        stack, op_token, "runs", "create", "cli-run", "--set", "optimizer.lr=0.002", "--set", "training.seed=3"
    )
    assert created.returncode == 0, created.stderr
    run = json.loads(created.stdout)
    assert run["config"]["optimizer"]["lr"] == 0.002 and run["config"]["training"]["seed"] == 3
    listed = json.loads(cpctl(stack, op_token, "runs", "list", "--status", "draft").stdout)
    assert [r["id"] for r in listed["items"]] == [run["id"]]
    refused = cpctl(stack, op_token, "runs", "create", "x", "--set", "parallel.zero_stage=9")
    assert refused.returncode == 1 and "overrides.parallel.zero_stage" in refused.stderr
    edited = cpctl(stack, op_token, "runs", "edit", str(run["id"]), "--rename", "renamed")
    assert json.loads(edited.stdout)["name"] == "renamed"
    assert cpctl(stack, "cpat_wrong", "me").returncode == 1
    token = json.loads(cpctl(stack, op_token, "tokens", "create", "ci").stdout)
    assert token["secret"].startswith("cpat_")
    assert json.loads(cpctl(stack, token["secret"], "me").stdout)["username"] == "otto"
    assert cpctl(stack, op_token, "tokens", "revoke", str(token["id"])).returncode == 0
    assert cpctl(stack, token["secret"], "me").returncode == 1
    with pytest.raises(Exception, match="operator or admin"):
        api_token_create(user=viewer, name="v")
