"""Supervision with real processes: a Celery worker through a Redis outage (a redis-server of the test's own,
killed and started again), the reconciler settling a run nobody watched, watchers that outlive their errors,
and `manage.py up`'s bounded restarts."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from django.db import connection
from django.test import override_settings

from controlplane.children import Children, GaveUp
from controlplane.processes import worker_argv
from runs.models import Attempt, Run, RunStatus
from tests.stack import ROOT, _database_url, free_port
from tests.workers.test_launch_and_watch import UNREACHABLE, _tiny
from workers import launching, supervision, watching

pytestmark = pytest.mark.django_db(transaction=True)


class RedisServer:
    """A redis-server of this test's own on a free port, to kill and start again."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(self.workdir),
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                redis.Redis.from_url(self.url).ping()
                return
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@pytest.fixture
def own_redis(tmp_path):
    if not shutil.which("redis-server"):
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    if server.proc and server.proc.poll() is None:
        server.kill()


def _worker(tmp_path: Path, redis_url: str, queue: str = "", name: str = "worker") -> tuple[subprocess.Popen, Path]:
    queue = queue or f"sup-{free_port()}"
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(connection.settings_dict),
        "REDIS_URL": redis_url,
        "CP_RUNS_DIR": str(tmp_path / "runs"),
        "CP_BASE_URL": UNREACHABLE,
        "CP_CELERY_QUEUE": queue,
        "CP_WARM_LAUNCHER": "0",
        "OMP_NUM_THREADS": "1",
    }
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(
        worker_argv(concurrency=2, queue=queue, name=f"{name}-{queue}@%h"),
        cwd=ROOT,
        env=env,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, log


def _wait(predicate, timeout_s: float, what: str, log: Path | None = None) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout_s:
            tail = log.read_text(errors="replace")[-4000:] if log else ""
            pytest.fail(f"{what} did not happen within {timeout_s:.0f} s\n{tail}")
        time.sleep(0.2)
    return time.monotonic() - start


def _status(run: Run) -> str:
    return Run.objects.filter(pk=run.pk).values_list("status", flat=True).first()


def test_the_worker_survives_a_redis_outage_and_the_run_ends_right(seeded, operator, tmp_path, own_redis):
    with override_settings(RUNS_DIR=tmp_path / "runs", CP_BASE_URL=UNREACHABLE):
        run = _tiny(operator, name="outage", steps=12)  # queued: the worker launches it when it is ready
    worker, log = _worker(tmp_path, own_redis.url)
    try:
        _wait(lambda: _status(run) == RunStatus.RUNNING, 240, "the run starting", log)
        own_redis.kill()  # every watcher message in flight is unacknowledged now
        run.refresh_from_db()
        exit_file = Path(run.run_dir) / "exit.json"
        _wait(exit_file.exists, 240, "the job ending", log)
        job_ended = time.monotonic()
        time.sleep(3)
        assert worker.poll() is None, "the worker died with Redis:\n" + log.read_text(errors="replace")[-4000:]
        own_redis.start()
        back = time.monotonic()
        _wait(lambda: _status(run) == RunStatus.SUCCEEDED, 30, "the run settling after Redis returned", log)
        settled = time.monotonic()
        assert worker.poll() is None
        # The worker takes new work again once Redis is back.
        with override_settings(RUNS_DIR=tmp_path / "runs", CP_BASE_URL=UNREACHABLE):
            second = _tiny(operator, name="after-outage", steps=3)
        _wait(lambda: _status(second) == RunStatus.SUCCEEDED, 240, "a launch after the outage", log)
        assert Attempt.objects.get(run=second).state == "succeeded"
        figures = {
            "settled_after_job_end_s": round(settled - job_ended, 1),
            "settled_after_redis_back_s": round(max(0.0, settled - back), 1),
        }
        print("redis outage figures:", json.dumps(figures))
        assert "Unrecoverable error" not in log.read_text(errors="replace")
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)


def test_the_reconciler_settles_a_run_nobody_watches_while_redis_is_away(seeded, operator, tmp_path):
    with override_settings(RUNS_DIR=tmp_path, CP_BASE_URL=UNREACHABLE):
        run = _tiny(operator, name="unwatched", steps=3)
        assert launching.launch_run(run.pk).startswith("submitted")
        run.refresh_from_db()
        _wait((Path(run.run_dir) / "exit.json").exists, 240, "the job ending")
        ended = time.monotonic()
        sent: list = []
        with override_settings(REDIS_CLIENT_URL=f"redis://127.0.0.1:{free_port()}/0"):  # nothing listens there
            done = supervision.reconcile_once(
                send_watch=lambda *a: sent.append(a), send_launch=sent.append, watch_inline=watching.watch_once
            )
        assert done.settled_inline == [run.pk] and not sent
        assert _status(run) == RunStatus.SUCCEEDED
        print(f"settled {time.monotonic() - ended:.1f} s after the job ended, with Redis away")


def test_the_reconciler_reattaches_a_watcher_once_and_relaunches_a_lost_launch(seeded, operator, tmp_path):
    with override_settings(RUNS_DIR=tmp_path, CP_BASE_URL=UNREACHABLE):
        watched = _tiny(operator, name="watched", steps=3)
        lost = _tiny(operator, name="lost-launch", steps=3)
        Run.objects.filter(pk=watched.pk).update(status=RunStatus.RUNNING)
        Attempt.objects.filter(run=lost).update(created_at="2000-01-01T00:00Z")
        Run.objects.filter(pk=lost.pk).update(queued_at="2000-01-01T00:00Z")
        redis.Redis.from_url(supervision.settings.REDIS_CLIENT_URL).delete(supervision.watcher_key(watched.pk))
        sent: list = []
        calls = {"send_watch": lambda *a: sent.append(("watch", a[0])), "send_launch": lambda r: sent.append(("launch", r)),
                 "watch_inline": watching.watch_once}  # fmt: skip
        supervision.reconcile_once(**calls)
        supervision.reconcile_once(**calls)  # the chain started by the first round still holds the run
        assert sent.count(("watch", watched.pk)) == 1
        assert ("launch", lost.pk) in sent


def test_a_watcher_pass_that_fails_is_retried_with_backoff_never_dropped(seeded, operator, tmp_path):
    from controlplane.celery import app
    from workers import tasks

    with override_settings(RUNS_DIR=tmp_path, CP_BASE_URL=UNREACHABLE):
        run = _tiny(operator, name="broken-poll", steps=3)
    # A job id the backend cannot parse: every pass raises, as a database or backend outage would.
    Run.objects.filter(pk=run.pk).update(status=RunStatus.RUNNING, backend_job_id="local:x", run_dir=str(tmp_path))
    client = redis.Redis.from_url(supervision.settings.REDIS_CLIENT_URL)
    queue = app.conf.task_default_queue
    before = client.llen(queue)
    tasks.watch_run(run.pk, token="t1", failures=2)
    assert client.llen(queue) == before + 1, "the failed pass re-queued the next one"
    message = json.loads(client.lindex(queue, 0))
    args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
    assert args == [run.pk] and kwargs == {"token": "t1", "failures": 3}
    assert message["headers"]["eta"] is not None  # after a back-off, not at once
    client.lpop(queue)
    assert supervision.backoff_s(3, 1.0) == 4.0 and supervision.backoff_s(9, 1.0) == supervision.WATCH_BACKOFF_MAX_S
    assert client.get(supervision.watcher_key(run.pk)) == b"t1"
    assert tasks.watch_run(run.pk, token="another", failures=0) is None  # another chain holds it: this one ends
    client.delete(supervision.watcher_key(run.pk))


def test_up_restarts_a_crashed_child_within_a_bound(tmp_path):
    lines: list[str] = []
    children = Children(lines.append, max_restarts=2, window_s=60, max_backoff_s=0.2)
    marker = tmp_path / "starts"
    script = f"open({str(marker)!r}, 'a').write('x'); import sys; sys.exit(3)"
    children.add("the crashing child", [sys.executable, "-c", script], dict(os.environ))
    children.add("the steady child", [sys.executable, "-c", "import time; time.sleep(60)"], dict(os.environ))
    try:
        with pytest.raises(GaveUp):
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                children.check()
                time.sleep(0.05)
        assert marker.read_text() == "xxx"  # the first start and two restarts
        assert sum("restarted" in line for line in lines) == 2
        assert children.children[1].proc.poll() is None, "the other child ran on throughout"
    finally:
        children.stop(timeout_s=5)


def test_two_workers_and_repeated_start_up_launches_start_one_job(seeded, operator, tmp_path, own_redis):
    """`make up`'s double launch: the launch queued on commit, the same run re-queued by every worker's start-up
    re-attach, and more deliveries besides, on two real workers: one job."""
    from controlplane.celery import app
    from runs.models import AuditEvent

    with override_settings(RUNS_DIR=tmp_path / "runs", CP_BASE_URL=UNREACHABLE):
        run = _tiny(operator, name="demo-like", steps=3)
    queue = f"dup-{free_port()}"
    with app.connection_for_write(own_redis.url) as conn:
        for _ in range(5):
            app.send_task("workers.launch_run", kwargs={"run_id": run.pk}, queue=queue, connection=conn)
    workers = [_worker(tmp_path, own_redis.url, queue, name=f"w{i}") for i in range(2)]
    try:
        _wait(lambda: _status(run) == RunStatus.SUCCEEDED, 300, "the run succeeding", workers[0][1])
        run.refresh_from_db()
        assert AuditEvent.objects.filter(run_id=run.pk, action="run.submitted").count() == 1
        steps = [json.loads(line)["step"] for line in (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines()
                 if json.loads(line).get("kind") == "metrics"]  # fmt: skip
        assert steps == [1, 2, 3], "a second job would write every step twice"
        outcomes = "".join(log.read_text(errors="replace") for _, log in workers)
        assert outcomes.count(f"launch run {run.pk}: submitted") == 1
    finally:
        for proc, _ in workers:
            proc.send_signal(signal.SIGTERM)
        for proc, _ in workers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
