"""The mlflow client's artifacts go through MLflow's artifact proxy into the run's folder, from a process whose
working directory shares no path with the control plane."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import httpx
import pytest

from runs.services.mlflow_artifacts import artifact_root
from runs.services.tokens import run_token_issue, token_cache_clear
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db(transaction=True)
pytest.importorskip("mlflow")

UPLOADER = textwrap.dedent(
    """
    import json, os, pathlib, sys
    import mlflow
    from mlflow.tracking import MlflowClient

    here = pathlib.Path.cwd()
    (here / "notes.txt").write_text("written far from the control plane\\n")
    (here / "weights").mkdir()
    (here / "weights" / "blob.bin").write_bytes(bytes(range(256)) * 4096)
    with mlflow.start_run() as run:
        mlflow.log_artifact("notes.txt")
        mlflow.log_artifacts("weights", artifact_path="model")
        with mlflow.start_run(nested=True) as child:
            mlflow.log_text("child's own", "child.txt")
        uri = run.info.artifact_uri
    client = MlflowClient()
    listed = sorted(f.path for f in client.list_artifacts(run.info.run_id))
    nested = sorted(f.path for f in client.list_artifacts(run.info.run_id, "model"))
    back = pathlib.Path(client.download_artifacts(run.info.run_id, "model/blob.bin", str(here / "back")))
    print(json.dumps({"uri": uri, "listed": listed, "nested": nested, "child": child.info.run_id,
                      "same": back.read_bytes() == (here / "weights" / "blob.bin").read_bytes()}))
    """
)


@pytest.fixture
def tracked(seeded, operator, live_server, settings, tmp_path):
    settings.RUNS_DIR = tmp_path / "control-plane" / "runs"
    token_cache_clear()
    run = tiny_run(owner=operator)
    run.token = run_token_issue(run=run, kind="operator").secret
    run.uri = f"{live_server.url}/api/v1/ingest/{run.pk}/mlflow"
    return run


def test_log_artifact_from_a_separate_working_directory_lands_in_the_run_folder_and_downloads_identically(
    tracked, tmp_path
):
    elsewhere = tmp_path / "another-machine"
    elsewhere.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(elsewhere),
        "MLFLOW_TRACKING_URI": tracked.uri,
        "MLFLOW_TRACKING_TOKEN": tracked.token,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    done = subprocess.run(
        [sys.executable, "-c", UPLOADER], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["uri"] == f"mlflow-artifacts:/{tracked.pk}/artifacts"  # the proxy form, never a file:// path
    assert answer["listed"] == ["model", "notes.txt"] and answer["nested"] == ["model/blob.bin"]
    assert answer["same"] is True
    root = artifact_root(tracked)
    assert (root / "artifacts" / "notes.txt").read_text() == "written far from the control plane\n"
    assert (root / "artifacts" / "model" / "blob.bin").read_bytes() == bytes(range(256)) * 4096
    assert (root / "children" / answer["child"] / "artifacts" / "child.txt").read_text() == "child's own"
    assert not any(p.name.startswith(".upload-") for p in root.rglob("*"))


@pytest.mark.parametrize(
    "path",
    [
        "{run}/artifacts/../../token",
        "{run}/artifacts/%2e%2e/%2e%2e/token",
        "{run}/artifacts/a//b",
        "{run}/artifacts/%2e/a",
        "{run}/artifacts/a%00b",
        "{other}/artifacts/a.txt",
        "/etc/passwd",
    ],
)
def test_artifact_paths_that_would_leave_the_run_are_refused(tracked, path):
    url = f"{tracked.uri}/api/2.0/mlflow-artifacts/artifacts/" + path.format(run=tracked.pk, other=tracked.pk + 1)
    headers = {"Authorization": f"Bearer {tracked.token}"}
    put = httpx.put(url, content=b"x", headers=headers)
    assert 400 <= put.status_code < 500, put.text
    get = httpx.get(url, headers=headers)
    assert 400 <= get.status_code < 500
    assert not artifact_root(tracked).exists() or not any(artifact_root(tracked).rglob("*"))


@pytest.mark.parametrize(
    "path", ["{run}/../token", "{run}/artifacts/../../x", "/{run}/a", "{run}/a\\..\\b", "{run}//a"]
)
def test_the_artifact_service_refuses_paths_that_leave_the_run(tracked, path):
    from runs.services.mlflow_artifacts import ArtifactRefused, artifact_store

    with pytest.raises(ArtifactRefused) as refused:
        artifact_store(run=tracked, path=path.format(run=tracked.pk), read=iter([b"x", b""]).__next__)
    assert refused.value.status == 400


def test_a_symlink_planted_in_the_run_folder_is_not_followed(tracked, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("control plane only")
    root = artifact_root(tracked) / "artifacts"
    root.mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)
    headers = {"Authorization": f"Bearer {tracked.token}"}
    base = f"{tracked.uri}/api/2.0/mlflow-artifacts/artifacts/{tracked.pk}/artifacts"
    get = httpx.get(f"{base}/link/secret.txt", headers=headers)
    assert get.status_code == 400 and "symbolic link" in get.json()["message"]
    put = httpx.put(f"{base}/link/new.txt", content=b"x", headers=headers)
    assert put.status_code == 400 and not (tmp_path / "new.txt").exists()
    listed = httpx.get(
        f"{tracked.uri}/api/2.0/mlflow-artifacts/artifacts", params={"path": f"{tracked.pk}/artifacts"}, headers=headers
    )
    assert listed.json() == {"files": []}
    (root / "file-link").symlink_to(secret)
    get = httpx.get(f"{base}/file-link", headers=headers)
    assert get.status_code == 400 and "symbolic link" in get.json()["message"]
    put = httpx.put(f"{base}/file-link", content=b"overwritten?", headers=headers)
    assert put.status_code == 400 and secret.read_text() == "control plane only"


def test_artifacts_need_the_runs_token(tracked):
    url = f"{tracked.uri}/api/2.0/mlflow-artifacts/artifacts/{tracked.pk}/artifacts/a.txt"
    assert httpx.put(url, content=b"x", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert not artifact_root(tracked).exists()
