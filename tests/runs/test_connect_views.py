"""The run page's connect panel (tracking URI, token issued before launch and revoked, snippets) and job-output
endpoint (stream, rank, search; confined to the run's own two files; roles)."""

import os

import pytest
from django.urls import reverse

from controlplane.management.commands.up import base_url
from runs.models import Run, RunToken
from runs.services.tokens import run_token_check
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def run(seeded, operator):
    return tiny_run(owner=operator, name="connect-me")


def test_an_operator_sees_the_tracking_uri_and_issues_a_token_before_launch(client, operator, run, settings):
    settings.CP_BASE_URL = "http://cp.example:8123/"
    client.force_login(operator)
    page = client.get(reverse("run-detail", args=[run.pk])).content.decode()
    assert f"http://cp.example:8123/api/v1/ingest/{run.pk}/mlflow" in page
    assert "&lt;issue a token below&gt;" in page
    answer = client.post(reverse("run-token-issue", args=[run.pk]), {"label": "laptop"})
    assert answer.status_code == 200 and answer["Cache-Control"] == "no-store"
    token = RunToken.objects.get(run=run, label="laptop")
    html = answer.content.decode()
    secret = html.split('id="issued-token">')[1].split("<")[0]
    assert secret.startswith("cpt_") and secret.endswith(token.hint)
    assert f"export MLFLOW_TRACKING_TOKEN={secret}" in html and f"Authorization: Bearer {secret}" in html
    assert run_token_check(run_id=run.pk, token=secret) is not None  # a draft: for a script run outside
    assert secret not in client.get(reverse("run-detail", args=[run.pk])).content.decode()  # shown once

    client.post(reverse("run-token-revoke", args=[run.pk, token.pk]))
    assert run_token_check(run_id=run.pk, token=secret) is None


def test_viewers_see_no_connect_panel_and_cannot_issue(client, viewer, run):
    client.force_login(viewer)
    assert 'id="connect"' not in client.get(reverse("run-detail", args=[run.pk])).content.decode()
    assert client.post(reverse("run-token-issue", args=[run.pk])).status_code == 403
    assert not RunToken.objects.filter(run=run).exists()


def test_a_token_of_another_run_cannot_be_revoked_through_this_one(client, operator, run):
    other = tiny_run(owner=operator, name="other")
    client.force_login(operator)
    client.post(reverse("run-token-issue", args=[other.pk]))
    token = RunToken.objects.get(run=other)
    assert client.post(reverse("run-token-revoke", args=[run.pk, token.pk])).status_code == 404


def test_an_ended_run_refuses_a_new_token_with_a_message(client, operator, run):
    Run.objects.filter(pk=run.pk).update(status="succeeded")
    client.force_login(operator)
    answer = client.post(reverse("run-token-issue", args=[run.pk]), follow=True)
    assert "has ended" in answer.content.decode() and not RunToken.objects.filter(run=run).exists()


def _launched(run, tmp_path, stdout: str, stderr: str = "") -> Run:
    (tmp_path / "stdout.log").write_text(stdout)
    (tmp_path / "stderr.log").write_text(stderr)
    Run.objects.filter(pk=run.pk).update(run_dir=str(tmp_path))
    run.refresh_from_db()
    return run


def test_job_output_by_stream_rank_and_search(client, viewer, run, tmp_path):
    _launched(
        run,
        tmp_path,
        "starting\nstep 1 loss 2.0\n",
        "[rank0]: Traceback (most recent call last):\n[rank1]: waiting\n[rank0]: ValueError: empty batch\n",
    )
    client.force_login(viewer)
    url = reverse("run-logs", args=[run.pk])
    body = client.get(url).json()
    assert [line["text"] for line in body["lines"]] == ["starting", "step 1 loss 2.0"]
    body = client.get(url, {"stream": "stderr", "rank": "0"}).json()
    assert [line["rank"] for line in body["lines"]] == [0, 0]
    body = client.get(url, {"stream": "stderr", "q": "VALUEerror"}).json()
    assert [line["text"] for line in body["lines"]] == ["[rank0]: ValueError: empty batch"]
    assert client.get(url, {"stream": "stderr", "limit": "1"}).json()["matched"] == 3


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"stream": "../token"}, "stream"),
        ({"stream": "exit.json"}, "stream"),
        ({"rank": "one"}, "rank"),
        ({"rank": "-1"}, "rank"),
        ({"limit": "0"}, "limit"),
        ({"limit": "99999999"}, "limit"),
    ],
)
def test_bad_log_requests_are_refused_naming_the_field(client, viewer, run, tmp_path, params, field):
    _launched(run, tmp_path, "x\n")
    client.force_login(viewer)
    answer = client.get(reverse("run-logs", args=[run.pk]), params)
    assert answer.status_code == 400 and answer.json()["field"] == field


def test_a_log_that_is_a_link_out_of_the_run_directory_is_refused(client, viewer, run, tmp_path):
    secret = tmp_path / "elsewhere.txt"
    secret.write_text("not yours\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.symlink(secret, run_dir / "stdout.log")
    Run.objects.filter(pk=run.pk).update(run_dir=str(run_dir))
    client.force_login(viewer)
    answer = client.get(reverse("run-logs", args=[run.pk]))
    assert answer.status_code == 400 and "not yours" not in answer.content.decode()


def test_job_output_needs_a_login(client, run):
    assert client.get(reverse("run-logs", args=[run.pk])).status_code in (302, 403)


@pytest.mark.parametrize(
    ("host", "environ", "expected"),
    [
        ("127.0.0.1", {}, "http://127.0.0.1:8123"),
        ("0.0.0.0", {}, "http://127.0.0.1:8123"),
        ("::", {}, "http://[::1]:8123"),
        ("cp.internal", {}, "http://cp.internal:8123"),
        ("0.0.0.0", {"CP_BASE_URL": "https://cp.example/"}, "https://cp.example"),
    ],
)
def test_the_base_url_follows_the_port_up_listens_on_unless_set(host, environ, expected):
    assert base_url(host=host, port=8123, environ=environ) == expected


def test_opening_the_issue_address_again_issues_nothing(client, operator, run):
    client.force_login(operator)
    answer = client.get(reverse("run-token-issue", args=[run.pk]))
    assert answer.status_code == 302 and answer["Location"] == reverse("run-detail", args=[run.pk])
    assert not RunToken.objects.filter(run=run).exists()
