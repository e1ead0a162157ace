"""Run tokens: valid for their own run, for their attempt while it is live (plus a grace), revocable, rotated."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time

import httpx
import pytest
from django.utils import timezone

from controlplane.processes import web_server_argv
from runs.models import AuditEvent, Run, RunStatus, RunToken, TokenKind
from runs.services.jobs import run_finish
from runs.services.tokens import (
    TokenRefused,
    run_token_check,
    run_token_check_cached,
    run_token_issue,
    run_token_revoke,
    run_tokens,
    run_tokens_revoke,
    token_cache_clear,
)
from runs.services.transitions import transition
from tests.runs.factories import tiny_run
from tests.stack import ROOT, _database_url, free_port

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _fresh_cache():
    token_cache_clear()
    yield
    token_cache_clear()


def launched(run: Run) -> Run:
    for status in (RunStatus.QUEUED, RunStatus.LAUNCHING, RunStatus.RUNNING):
        run = transition(run=run, to=status, actor="system")
    return run


def test_a_job_token_is_valid_for_its_own_run_only(seeded, operator):
    run = launched(tiny_run(owner=operator))
    other = launched(tiny_run(owner=operator, name="other"))
    secret = run_token_issue(run=run, kind=TokenKind.JOB).secret
    assert run_token_check(run_id=run.pk, token=secret).pk == run.pk
    assert run_token_check(run_id=other.pk, token=secret) is None
    assert run_token_check_cached(run_id=other.pk, token=secret) is None


def test_a_job_token_is_refused_before_launch_and_after_the_grace(seeded, operator, settings):
    run = tiny_run(owner=operator)
    secret = run_token_issue(run=run, kind=TokenKind.JOB).secret
    assert run_token_check(run_id=run.pk, token=secret) is None  # a draft has no live attempt
    run = launched(run)
    assert run_token_check(run_id=run.pk, token=secret).pk == run.pk
    settings.TOKEN_GRACE_S = 60
    run_finish(run=run, status=RunStatus.SUCCEEDED)
    assert run_token_check(run_id=run.pk, token=secret) is not None  # the reporter's final flush
    Run.objects.filter(pk=run.pk).update(finished_at=timezone.now() - datetime.timedelta(seconds=61))
    assert run_token_check(run_id=run.pk, token=secret) is None
    (token, state) = run_tokens(run=run)[0]
    assert not state.live and state.reason == "the run has ended"


def test_the_cache_never_outlives_the_grace(seeded, operator, settings):
    settings.TOKEN_GRACE_S = 1
    settings.TOKEN_CACHE_TTL_S = 60
    run = launched(tiny_run(owner=operator))
    secret = run_token_issue(run=run, kind=TokenKind.JOB).secret
    run_finish(run=run, status=RunStatus.FAILED, reason="test")
    assert run_token_check_cached(run_id=run.pk, token=secret) is not None  # cached until the grace ends
    time.sleep(1.2)
    assert run_token_check_cached(run_id=run.pk, token=secret) is None


def test_each_attempt_gets_its_own_token_and_the_previous_one_stops(seeded, operator):
    run = launched(tiny_run(owner=operator))
    first = run_token_issue(run=run, kind=TokenKind.JOB).secret
    assert run_token_check_cached(run_id=run.pk, token=first) is not None
    Run.objects.filter(pk=run.pk).update(attempt=2)  # the next attempt, as a relaunch makes it
    assert run_token_check(run_id=run.pk, token=first) is None  # an attempt's token dies with it
    second = run_token_issue(run=run, kind=TokenKind.JOB).secret
    assert run_token_check_cached(run_id=run.pk, token=first) is None  # this process forgets it at once
    assert run_token_check_cached(run_id=run.pk, token=second).pk == run.pk
    old, new = RunToken.objects.filter(run=run).order_by("pk")
    assert (old.attempt, new.attempt) == (1, 2) and old.revoked_at is not None and new.revoked_at is None
    issued = AuditEvent.objects.filter(run_id=run.pk, action="run.token_issued").order_by("pk").last()
    assert issued.diff["revoked"] == [old.pk]


def test_a_revoked_token_is_refused_at_once_in_the_revoking_process(seeded, operator, admin_user_role):
    run = launched(tiny_run(owner=operator))
    issued = run_token_issue(run=run, kind=TokenKind.JOB)
    assert run_token_check_cached(run_id=run.pk, token=issued.secret) is not None
    assert run_token_revoke(token=issued.token, actor=admin_user_role, reason="leaked in a notebook")
    assert run_token_check_cached(run_id=run.pk, token=issued.secret) is None
    assert not run_token_revoke(token=issued.token, actor=admin_user_role)  # once
    event = AuditEvent.objects.get(action="run.token_revoked", run_id=run.pk)
    assert event.actor == admin_user_role.username and "leaked in a notebook" in event.message
    assert issued.secret not in json.dumps([event.message, event.diff, event.object_repr])


def test_operator_tokens_expire_are_revocable_and_are_not_issued_for_an_ended_run(seeded, operator):
    run = tiny_run(owner=operator)
    issued = run_token_issue(run=run, kind=TokenKind.OPERATOR, actor=operator, label="laptop", ttl_s=3600)
    assert issued.secret.startswith("cpt_") and issued.token.hint == issued.secret[-4:]
    assert issued.token.issued_by == operator and issued.token.attempt is None
    assert run_token_check(run_id=run.pk, token=issued.secret).pk == run.pk  # before any launch: own scripts
    RunToken.objects.filter(pk=issued.token.pk).update(expires_at=timezone.now() - datetime.timedelta(seconds=1))
    assert run_token_check(run_id=run.pk, token=issued.secret) is None
    second = run_token_issue(run=run, kind=TokenKind.OPERATOR, actor=operator)
    job = run_token_issue(run=run, kind=TokenKind.JOB)
    assert RunToken.objects.get(pk=second.token.pk).revoked_at is None  # a job token rotates job tokens only
    assert run_tokens_revoke(run=run, actor=operator, kind=TokenKind.OPERATOR) == 2  # the expired one too
    assert run_token_check(run_id=run.pk, token=second.secret) is None
    assert RunToken.objects.get(pk=job.token.pk).revoked_at is None
    transition(run=run, to=RunStatus.CANCELLED, actor=operator)
    with pytest.raises(TokenRefused, match="has ended"):
        run_token_issue(run=run, kind=TokenKind.OPERATOR, actor=operator)
    with pytest.raises(TokenRefused, match="kind must be one of"):
        run_token_issue(run=run, kind="root")


def test_only_digests_are_stored(seeded, operator):
    run = tiny_run(owner=operator)
    issued = run_token_issue(run=run, kind=TokenKind.OPERATOR, actor=operator)
    row = RunToken.objects.filter(run=run).values().get()
    assert issued.secret not in json.dumps(row, default=str)
    assert not RunToken.objects.filter(digest=issued.secret).exists()


def test_another_process_refuses_a_revoked_token_within_its_cache_ttl(seeded, operator, tmp_path):
    """The bound on revocation: a web server that checked a token keeps trusting it for at most
    CP_TOKEN_CACHE_TTL_S after it is revoked elsewhere (here 2 s)."""
    from django.conf import settings
    from django.db import connection

    run = launched(tiny_run(owner=operator))
    issued = run_token_issue(run=run, kind=TokenKind.JOB)
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(connection.settings_dict),
        "CP_VAR_DIR": str(settings.VAR_DIR),
        "CP_TOKEN_CACHE_TTL_S": "2",
    }
    if not settings.EMBEDDED_REDIS:
        env["REDIS_URL"] = os.environ["REDIS_URL"]
    log = open(tmp_path / "web.log", "wb")
    proc = subprocess.Popen(
        web_server_argv(port=port), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/api/v1/ingest/{run.pk}/"
    headers = {"Authorization": f"Bearer {issued.secret}"}

    def post(step: int) -> int:
        body = {"records": [{"kind": "metrics", "step": step, "time": time.time(), "values": {"loss": 1.0}}]}
        return httpx.post(url, json=body, headers=headers, timeout=10).status_code

    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, (tmp_path / "web.log").read_text()
                time.sleep(0.2)
        assert post(1) == 200  # checked, and now cached by the server
        run_token_revoke(token=issued.token, actor=operator)
        revoked_at = time.monotonic()
        step = 2
        while post(step) == 200:
            step += 1
            assert time.monotonic() - revoked_at < 2 + 1.0, "the server trusted a revoked token past its cache TTL"
            time.sleep(0.05)
        assert post(step + 1) == 401
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        log.close()
