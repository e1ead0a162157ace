import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from jobs.reporter import Reporter

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = {"flush_interval_s": 0.05, "backoff_initial_s": 0.02, "backoff_max_s": 0.1}


class IngestServer:
    """A stand-in ingest endpoint on 127.0.0.1 that can go down (port closed) and come back on the same port."""

    def __init__(self):
        self.records = []  # as posted: events, heartbeats and metrics records
        self.column_points = []  # (key, step) of the columns posted
        self.bodies = []
        self.authorizations = []
        self.requests = 0
        self.status = 200
        self.scripted = []  # statuses answered (without storing) before falling back to self.status
        self.port = 0
        self._lock = threading.Lock()
        self._server = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/api/v1/ingest/12/"

    def start(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with owner._lock:
                    owner.requests += 1
                    owner.authorizations.append(self.headers.get("Authorization"))
                    status = owner.scripted.pop(0) if owner.scripted else owner.status
                    if status == 200:
                        doc = json.loads(body)
                        owner.bodies.append(doc)
                        owner.records.extend(doc.get("records", []))
                        for key, column in doc.get("series", {}).items():
                            owner.column_points.extend((key, step) for step in column["steps"])
                if status == "garbage":
                    self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"accepted": true}' if status == 200 else b'{"detail": "invalid token"}')

            def log_message(self, *args):
                pass

        self._server = HTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
        self._thread.start()

    def stop(self):
        # shutdown() returns after the request in progress is answered, so no accepted batch goes unanswered.
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def metric_points(self):
        with self._lock:
            from_records = [(k, r["step"]) for r in self.records if r["kind"] == "metrics" for k in r["values"]]
            return from_records + self.column_points


@pytest.fixture
def server():
    s = IngestServer()
    s.start()
    yield s
    if s._thread.is_alive():
        s.stop()


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def file_records(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def acked(run_dir):
    return int((Path(run_dir) / "metrics.acked").read_text())


def test_outage_then_recovery_delivers_every_point_exactly_once(tmp_path, server):
    rep = Reporter(str(tmp_path), server.url, "secret", batch_size=50, **FAST)
    for step in range(500):
        rep.log(step, {"loss": 1.0 / (step + 1), "lr": 0.001})
        if step == 150:
            wait_until(lambda: server.metric_points())
            server.stop()
        if step == 350:
            wait_until(lambda: rep.stats["failures"] >= 2)
            server.start()
    rep.close(timeout=5)

    points = server.metric_points()
    assert len(points) == 1000
    assert set(points) == {(k, s) for s in range(500) for k in ("loss", "lr")}
    assert rep.stats["failures"] >= 2
    assert set(server.authorizations) == {"Bearer secret"}
    assert [r["step"] for r in file_records(tmp_path)] == list(range(500))
    assert acked(tmp_path) == (tmp_path / "metrics.jsonl").stat().st_size


def test_metrics_go_as_columns_and_other_records_as_they_are(tmp_path, server):
    rep = Reporter(str(tmp_path), server.url, "secret", batch_size=10, **{**FAST, "flush_interval_s": 60})
    rep.log(0, {"loss": 2.5, "lr": 0.001})
    wait_until(lambda: server.metric_points())  # the first metrics go out at once, alone
    rep.log(1, {"loss": 2.25})
    rep.heartbeat(1)
    rep.log(2, {"loss": 2.0, "lr": 0.001})
    rep.event("checkpoint_saved", 2, tag="step_000002", path="/x", bytes=1, metrics={})
    rep.close(timeout=5)  # sends the rest in one batch
    first, rest = server.bodies
    assert first == {"series": {"loss": {"steps": [0], "values": [2.5]}, "lr": {"steps": [0], "values": [0.001]}}}
    assert rest["series"] == {
        "loss": {"steps": [1, 2], "values": [2.25, 2.0]},
        "lr": {"steps": [2], "values": [0.001]},
    }
    assert [(r["kind"], r["step"]) for r in rest["records"]] == [("heartbeat", 1), ("event", 2)]


def test_log_stays_fast_while_the_control_plane_is_down(tmp_path, server):
    server.stop()
    rep = Reporter(str(tmp_path), server.url, "t", batch_size=50, **FAST)
    values = {"loss": 2.5, "lr": 1e-3, "grad_norm": 0.7, "tokens_per_s": 18000.0}
    # CPU time of this thread measures log()'s own cost even when other jobs share the two cores.
    cpu, wall = time.thread_time(), time.perf_counter()
    for step in range(10_000):
        rep.log(step, values)
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    assert cpu < 0.5 and wall < 3.0, f"10,000 log() calls took {cpu:.3f}s CPU, {wall:.3f}s wall"

    start = time.perf_counter()
    rep.close(timeout=0.3)
    assert time.perf_counter() - start < 1.0
    assert len(file_records(tmp_path)) == 10_000
    assert rep.stats["failures"] >= 1 and rep.acked_offset == 0


def test_log_does_not_wait_for_a_hanging_control_plane(tmp_path):
    # A listening socket that never answers: the sender's request hangs until its timeout.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    try:
        url = f"http://127.0.0.1:{hang.getsockname()[1]}/ingest/"
        rep = Reporter(str(tmp_path), url, "t", batch_size=10, request_timeout_s=5.0, **FAST)
        rep.log(0, {"loss": 1.0})
        wait_until(lambda: rep.stats["posts"] == 0 and rep._unsent_hint == 0, timeout=2)
        start = time.perf_counter()
        for step in range(1, 2001):
            rep.log(step, {"loss": 1.0})
        assert time.perf_counter() - start < 2.0
        start = time.perf_counter()
        rep.close(timeout=0.3)
        assert time.perf_counter() - start < 1.5
        assert len(file_records(tmp_path)) == 2001
    finally:
        hang.close()


CHILD = """
import os, sys, time
sys.path.insert(0, sys.argv[3])
from jobs.reporter import Reporter
rep = Reporter(sys.argv[1], sys.argv[2], "tok", batch_size=20, flush_interval_s=0.05,
               backoff_initial_s=0.02, backoff_max_s=0.1)
for step in range(60):
    rep.log(step, {"loss": float(step)})
deadline = time.time() + 10
while rep.acked_offset < os.path.getsize(rep.metrics_path) and time.time() < deadline:
    time.sleep(0.01)
print("acked", rep.acked_offset, flush=True)
sys.stdin.readline()
for step in range(60, 100):
    rep.log(step, {"loss": float(step)})
rep.event("checkpoint_saved", 99, tag="step_000099")
os._exit(0)  # die like a killed job: no close(), the backlog stays unsent
"""


def test_process_restart_sends_only_the_unacknowledged_backlog(tmp_path, server):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), server.url, str(REPO_ROOT)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = child.stdout.readline()
    assert line.startswith("acked"), line
    server.stop()
    child.stdin.write("\n")
    child.stdin.flush()
    assert child.wait(timeout=10) == 0
    first = server.metric_points()
    assert sorted(s for _, s in first) == list(range(60))
    assert acked(tmp_path) == int(line.split()[1]) < (tmp_path / "metrics.jsonl").stat().st_size

    server.start()
    rep = Reporter(str(tmp_path), server.url, "tok", batch_size=20, **FAST)
    for step in range(100, 110):
        rep.log(step, {"loss": float(step)})
    rep.close(timeout=5)

    points = server.metric_points()
    assert sorted(s for _, s in points) == list(range(110))  # each step exactly once
    assert [r["type"] for r in server.records if r["kind"] == "event"] == ["checkpoint_saved"]
    assert acked(tmp_path) == (tmp_path / "metrics.jsonl").stat().st_size


def test_401_is_reported_once_and_not_retried(tmp_path, server, capsys):
    server.status = 401
    rep = Reporter(str(tmp_path), server.url, "wrong", batch_size=50, **FAST)
    for step in range(120):
        rep.log(step, {"loss": 1.0})
    wait_until(lambda: rep.halted is not None)
    time.sleep(0.2)
    for step in range(120, 240):
        rep.log(step, {"loss": 1.0})
    time.sleep(0.2)
    assert server.requests == 1
    start = time.perf_counter()
    rep.close(timeout=5)
    assert time.perf_counter() - start < 0.5
    err = capsys.readouterr().err
    assert err.count("HTTP 401") == 1 and "invalid token" in err and "Not retrying" in err
    assert len(file_records(tmp_path)) == 240 and rep.acked_offset == 0


def test_408_429_5xx_and_garbled_answers_are_retried(tmp_path, server):
    server.scripted = [503, 429, "garbage", 408, 500]
    rep = Reporter(str(tmp_path), server.url, "t", batch_size=10, **FAST)
    for step in range(25):
        rep.log(step, {"loss": 0.5})
    rep.close(timeout=5)
    assert rep.halted is None
    assert server.requests == 5 + 3
    assert sorted(s for _, s in server.metric_points()) == list(range(25))


def test_unreadable_partial_line_from_a_crash_is_skipped(tmp_path, server, capsys):
    good = {"kind": "metrics", "step": 0, "time": 1.0, "values": {"loss": 3.0}}
    (tmp_path / "metrics.jsonl").write_text(json.dumps(good) + "\n" + '{"kind": "metrics", "st')
    rep = Reporter(str(tmp_path), server.url, "t", **FAST)
    rep.log(1, {"loss": 2.0})
    rep.close(timeout=5)
    assert sorted(server.metric_points()) == [("loss", 0), ("loss", 1)]
    assert "unreadable line" in capsys.readouterr().err
    assert acked(tmp_path) == (tmp_path / "metrics.jsonl").stat().st_size


def test_records_follow_the_contract(tmp_path, capsys):
    rep = Reporter(str(tmp_path), None, None)
    rep.log(3, {"loss": 2.0, "loss/zh": 2.5, "expert_load/0": 0.25, "bad key!": 1.0, "nan_metric": float("nan")})
    rep.log(4, {"nan_metric": float("inf")})
    rep.event("nan", 4, loss=float("nan"), detail={"where": "grad"})
    rep.heartbeat(4)
    with pytest.raises(ValueError):
        rep.event("started", 0, time=1.0)
    rep.close()
    records = file_records(tmp_path)
    assert [r["kind"] for r in records] == ["metrics", "event", "heartbeat"]
    assert records[0]["values"] == {"loss": 2.0, "loss/zh": 2.5, "expert_load/0": 0.25}
    assert records[1] == {"kind": "event", "type": "nan", "step": 4, "time": records[1]["time"], "loss": "nan",
                          "detail": {"where": "grad"}}  # fmt: skip
    assert records[2]["step"] == 4 and isinstance(records[2]["time"], float)
    err = capsys.readouterr().err
    assert "bad key!" in err and err.count("nan_metric") == 1
    assert not (tmp_path / "metrics.acked").exists()


def test_every_n_steps_thins_metrics_only(tmp_path):
    rep = Reporter(str(tmp_path), None, None, every_n_steps=5)
    for step in range(12):
        rep.log(step, {"loss": 1.0})
        rep.heartbeat(step)
    rep.close()
    records = file_records(tmp_path)
    assert [r["step"] for r in records if r["kind"] == "metrics"] == [0, 5, 10]
    assert len([r for r in records if r["kind"] == "heartbeat"]) == 12


def test_disabled_reporter_touches_nothing(tmp_path):
    run_dir = tmp_path / "rank1"
    rep = Reporter.from_run_dir(str(run_dir), enabled=False)
    rep.log(1, {"loss": 1.0})
    rep.event("started", 0)
    rep.heartbeat(1)
    rep.close()
    assert not run_dir.exists()


def test_from_run_dir_reads_run_json_and_token(tmp_path, server, monkeypatch):
    reporter_section = {"ingest_url": server.url, "every_n_steps": 2, "batch_size": 7, "flush_interval_s": 0.05}
    (tmp_path / "run.json").write_text(json.dumps({"schema_version": 1, "reporter": reporter_section}))
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.delenv("CP_RUN_TOKEN", raising=False)
    rep = Reporter.from_run_dir(str(tmp_path), enabled=True)
    assert (rep.batch_size, rep.every_n_steps, rep.flush_interval_s) == (7, 2, 0.05)
    rep.log(0, {"loss": 1.0})
    rep.close(timeout=5)
    monkeypatch.setenv("CP_RUN_TOKEN", "from-env")
    with Reporter.from_run_dir(str(tmp_path)) as rep:
        rep.log(2, {"loss": 1.0})
    assert server.authorizations == ["Bearer from-file", "Bearer from-env"]
    assert sorted(server.metric_points()) == [("loss", 0), ("loss", 2)]


def test_unreachable_url_never_blocks_close(tmp_path):
    rep = Reporter(str(tmp_path), "http://127.0.0.1:9/ingest/", "t", **FAST)
    rep.log(0, {"loss": 1.0})
    start = time.perf_counter()
    rep.close(timeout=0.2)
    assert time.perf_counter() - start < 1.0
    assert os.path.getsize(tmp_path / "metrics.jsonl") > 0
