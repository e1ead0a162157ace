"""Follow a launched job: backend state, the durable metrics file, logs, hangs; end the run when the job ends.

The watcher complements the job's HTTP pushes: it ingests what the reporter wrote to metrics.jsonl beyond the
acknowledged offset (so a run is complete even when pushes were lost), reads loss lines and DeepSpeed csv_monitor
files of scripts that never call us, and classifies failures from the job's own output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import redis
from django.conf import settings
from django.db import DatabaseError, connection

from jobs.common.atomic import write_atomic
from jobs.common.failures import EXIT_NAN, EXIT_OOM, culprit, culprit_text, rank_records
from runs.metrics.store import metrics_record
from runs.models import AlertKind, Run, RunStatus, Severity
from runs.services import joblogs
from runs.services.alerts import alert_raise
from runs.services.attempts import attempt_mark_running
from runs.services.jobs import run_finish
from runs.services.remediation import Outcome, remediation_begin
from runs.services.transitions import IllegalTransition, transition
from workers.backends import JobState, get_backend
from workers.backends.procs import building_op
from workers.logscan import csv_monitor_records, scan_lines, step_line_records
from workers.remediating import hang_timeout_s, stalled_for_s

log = logging.getLogger(__name__)
WATCH_LOCK_NAMESPACE = 0x6370  # "cp": the high half of the advisory lock key, so other locks never collide
MAX_READ = 4 * 1024 * 1024  # bytes per file per pass, so one pass stays short


def _redis() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_CLIENT_URL)


class _State:
    def __init__(self, run_dir: Path):
        self.path = run_dir / "watch_state.json"
        self.data: dict = json.loads(self.path.read_text()) if self.path.exists() else {}

    def offset(self, name: str) -> int:
        return int(self.data.get("offsets", {}).get(name, 0))

    def set_offset(self, name: str, value: int) -> None:
        self.data.setdefault("offsets", {})[name] = value

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.data))


def _read_new(path: Path, start: int) -> tuple[list[str], int]:
    """Complete lines after byte `start`, and the offset after the last complete line."""
    if not path.exists():
        return [], start
    if path.stat().st_size < start:
        start = 0  # the file was started afresh (a backend that truncates its logs for the next attempt)
    with open(path, "rb") as fh:
        fh.seek(start)
        chunk = fh.read(MAX_READ)
    end = chunk.rfind(b"\n")
    if end < 0:
        return [], start
    return chunk[: end + 1].decode("utf-8", "replace").splitlines(), start + end + 1


def _ingest_metrics_file(run: Run, run_dir: Path, state: _State) -> int:
    acked_path = run_dir / "metrics.acked"
    acked = int(acked_path.read_text().strip() or 0) if acked_path.exists() else 0
    start = max(state.offset("metrics"), acked)
    lines, end = _read_new(run_dir / "metrics.jsonl", start)
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    if records:
        metrics_record(run=run, records=records)
    state.set_offset("metrics", end)
    return len(records)


def _scan_logs(run: Run, run_dir: Path, state: _State) -> list:
    findings = []
    for name in ("stdout.log", "stderr.log"):
        start = state.offset(name)
        lines, end = _read_new(run_dir / name, start)
        state.set_offset(name, end)
        if not lines:
            continue
        joblogs.broadcast_lines(run_id=run.pk, stream=name.removesuffix(".log"), lines=lines, offset=end)
        findings.extend(scan_lines(lines))
        # A script logging through MLflow sends its metrics with their real steps; its printed lines would chart
        # the same keys a second time at guessed ones.
        if run.trainer == "own_script" and not run.mlflow_run:
            records, seen = step_line_records(lines, time_s=time.time(), hf_logs_seen=int(state.data.get("hf_logs", 0)))
            state.data["hf_logs"] = seen
            if records:
                metrics_record(run=run, records=records)
    if run.trainer == "own_script":
        for csv in sorted(run_dir.glob("csv_monitor/**/*.csv")):
            key = csv.stem.removeprefix("Train_Samples_").removeprefix("Train_")
            lines, end = _read_new(csv, state.offset(str(csv)))
            state.set_offset(str(csv), end)
            records = csv_monitor_records(key, lines, time_s=time.time())
            if records:
                metrics_record(run=run, records=records)
    for finding in findings:
        if finding.kind == "oom":
            alert_raise(
                run=run,
                kind=AlertKind.OOM,
                severity=Severity.CRITICAL,
                step=run.last_step,
                message="Out of memory",
                evidence=finding.line,
            )
        elif finding.kind == "nccl":
            alert_raise(
                run=run,
                kind=AlertKind.NCCL,
                severity=Severity.CRITICAL,
                step=run.last_step,
                message="Collective communication error",
                evidence=finding.line,
            )
            state.data["nccl"] = finding.line
        elif finding.kind == "status":
            state.data["job_status"] = finding.data
        elif finding.kind == "traceback":
            state.data["last_exception"] = finding.line
            rank = (finding.data or {}).get("rank")
            first = state.data.get("first_exception") or {}
            # The first exception of an attempt is the cause; later ones are usually other ranks torn down by it.
            if first.get("attempt") != run.attempt:
                state.data["first_exception"] = {"line": finding.line, "rank": rank, "attempt": run.attempt}
        elif finding.kind == "compile":
            _compile_phase(run, state, finding)
        if finding.kind == "oom":
            state.data["oom"] = finding.line
    return findings


def _compile_phase(run: Run, state: _State, finding) -> None:
    """DeepSpeed compiling an op: said on the run page while it lasts (it can take minutes with nothing else)."""
    data = finding.data or {}
    if data.get("seconds") is None:
        _set_compiling(run, state, data.get("op", ""))
    else:
        state.data.setdefault("compiled", {})[data.get("op", "")] = data["seconds"]
        _set_compiling(run, state, None)


def _set_compiling(run: Run, state: _State, op: str | None) -> None:
    now = state.data.get("compiling")
    if op is None:
        if now is not None:
            state.data.pop("compiling")
            joblogs.broadcast_phase(run_id=run.pk, compiling=None)
    elif now is None or (op and now.get("op") != op):
        state.data["compiling"] = {"op": op, "since": time.time()}
        joblogs.broadcast_phase(run_id=run.pk, compiling=state.data["compiling"])


def _watch_builds(run: Run, run_dir: Path, state: _State) -> None:
    """On this machine, see the job's own compiler processes: DeepSpeed builds its ops with verbose=False, so the
    log says nothing until the op is built (on CPU, the shared-memory all-reduce: minutes on the first launch)."""
    child = run_dir / "child.json"
    if run.cluster.backend != "local" or not child.exists():
        return
    try:
        session = int(json.loads(child.read_text())["pgid"])
    except (OSError, ValueError, KeyError, TypeError):
        return
    _set_compiling(run, state, building_op(session))


def _check_hang(run: Run, run_dir: Path) -> None:
    timeout = hang_timeout_s(run)
    stalled = stalled_for_s(run_dir, timeout)
    if stalled is not None:
        alert_raise(
            run=run,
            kind=AlertKind.HANG,
            severity=Severity.CRITICAL,
            step=run.last_step,
            message=f"No heartbeat, step or output for {timeout:.0f} s",
            evidence=f"last write {stalled:.0f} s ago",
        )


def _end_reason(status, state: _State) -> tuple[str, str]:
    """(run status, reason) for a finished job."""
    job_status = (state.data.get("job_status") or {}).get("status")
    if status.state == JobState.SUCCEEDED and job_status in (None, "succeeded"):
        return RunStatus.SUCCEEDED, ""
    if status.state == JobState.CANCELLED:
        return RunStatus.CANCELLED, "cancelled"
    if job_status == "oom" or status.exit_code == EXIT_OOM or state.data.get("oom"):
        return RunStatus.FAILED, f"out of memory: {state.data.get('oom') or 'the trainer reported OOM'}"
    if job_status == "nan" or status.exit_code == EXIT_NAN:
        return RunStatus.FAILED, "NaN/Inf loss: the trainer aborted"
    if status.state == JobState.LOST:
        return RunStatus.FAILED, f"job lost: {status.reason}"
    return RunStatus.FAILED, _failure_detail(status, state)


def _failure_detail(status, state: _State) -> str:
    """The exception that ended the job (of the rank that raised first), else what the backend says."""
    first = state.data.get("first_exception") or {}
    if first.get("line"):
        rank = first.get("rank")
        where = f" (rank {rank})" if rank is not None else ""
        code = f"; the job exited with code {status.exit_code}" if status.exit_code not in (None, 0) else ""
        return f"{first['line']}{where}{code}"
    return state.data.get("last_exception") or status.reason or f"exit code {status.exit_code}"


def _failure_kind(status, state: _State) -> str:
    """What runs.services.remediation remedies a failed job as."""
    job_status = (state.data.get("job_status") or {}).get("status")
    if job_status == "oom" or status.exit_code == EXIT_OOM or state.data.get("oom"):
        return "oom"
    if job_status == "nan" or status.exit_code == EXIT_NAN:
        return "nan"
    if status.state == JobState.LOST:
        return "job_lost"
    if state.data.get("nccl") or (status.exit_code is not None and status.exit_code < 0):
        return "node_failure"  # a rank died by a signal, or a collective lost its peer
    return "error"


def _failed_step(run: Run, state: _State) -> int | None:
    step = (state.data.get("job_status") or {}).get("step")
    return int(step) if isinstance(step, int) else run.last_step


def watch_once(run_id: int) -> bool:
    """One pass; True while the run still needs watching."""
    run = Run.objects.select_related("cluster").filter(pk=run_id).first()
    if run is None or run.status not in (RunStatus.LAUNCHING, RunStatus.RUNNING):
        return False
    if not run.backend_job_id or not run.run_dir:
        return True  # the launcher has not recorded the job yet
    with run_watch_lock(run_id) as held:
        if not held:
            return True  # another worker is on it this moment
        return _watch_pass(run)


@contextlib.contextmanager
def run_watch_lock(run_id: int):
    """One watcher pass per run at a time, across workers. On PostgreSQL a session advisory lock (it works while
    Redis is away, and is released if the process or the database connection dies); elsewhere a Redis lock."""
    if connection.vendor == "postgresql":
        key = WATCH_LOCK_NAMESPACE * 2**32 + run_id
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            held = cursor.fetchone()[0]
        try:
            yield held
        finally:
            if held:
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
                except DatabaseError:
                    connection.close()  # a dead session holds no lock
        return
    lock = _redis().lock(f"cp:watch:{run_id}", timeout=120, blocking=False)
    held = lock.acquire()
    try:
        yield held
    finally:
        if held:
            try:
                lock.release()
            except redis.exceptions.LockError:
                pass


def _watch_pass(run: Run) -> bool:
    """One pass over a run whose watch lock this process holds; True while the run still needs watching."""
    run_dir = Path(run.run_dir)
    state = _State(run_dir)
    status = get_backend(run.cluster.backend).poll(run.backend_job_id, run_dir)
    if status.state == JobState.RUNNING and run.status == RunStatus.LAUNCHING:
        try:
            run = transition(run=run, to=RunStatus.RUNNING, actor="system")
            attempt_mark_running(run=run)
        except IllegalTransition:
            pass
    _ingest_metrics_file(run, run_dir, state)
    _scan_logs(run, run_dir, state)
    if not status.finished:
        _watch_builds(run, run_dir, state)
        # A first launch compiling ops prints nothing for minutes: that is not a hang.
        if run.status == RunStatus.RUNNING and not state.data.get("compiling"):
            _check_hang(run, run_dir)
        state.save()
        return True
    # The job ended: take the last of its output, then settle the run.
    _ingest_metrics_file(run, run_dir, state)
    _set_compiling(run, state, None)
    final, reason = _end_reason(status, state)
    found = None
    if final == RunStatus.FAILED:
        found = _name_the_culprit(run, run_dir, state)
        if found is not None:
            reason = f"{culprit_text(found)} ({reason})"[:2000]
    if status.state == JobState.LOST:
        alert_raise(
            run=run,
            kind=AlertKind.JOB_LOST,
            severity=Severity.CRITICAL,
            step=run.last_step,
            message="Job lost by the backend",
            evidence=status.reason,
        )
    elif final == RunStatus.FAILED:
        alert_raise(
            run=run,
            kind=AlertKind.JOB_FAILED,
            severity=Severity.CRITICAL,
            step=run.last_step,
            message="Job failed",
            evidence=reason[:2000],
        )
    state.save()
    if final == RunStatus.FAILED:
        # An attempt that failed in a way the run's policy remedies is relaunched; otherwise the run fails.
        remediation_begin(run=run, outcome=Outcome(kind=_failure_kind(status, state), step=_failed_step(run, state),
                                                   reason=reason, summary=_summary(status, found)))  # fmt: skip
    else:
        run_finish(run=run, status=final, reason=reason, summary=_summary(status, found))
    return False


def _summary(status, found: dict | None) -> dict:
    return {"state": str(status.state), "exit_code": status.exit_code, "culprit": found}


def _name_the_culprit(run: Run, run_dir: Path, state: _State) -> dict | None:
    """Which rank failed first, from the ranks' own records and the launcher's log; each rank's OOM raised as an
    alert and recorded as an `oom` event (only rank 0 reports while the job runs)."""
    world = run.cluster.nodes * run.cluster.gpus_per_node
    log_text = ""
    for name in ("stdout.log", "stderr.log"):
        path = run_dir / name
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(max(0, path.stat().st_size - 256 * 1024))
                log_text += fh.read().decode("utf-8", "replace")
    found = culprit(run_dir, world_size=world, log_text=log_text)
    if found is None:
        return None
    for record in rank_records(run_dir):
        if record.get("status") != "oom":
            continue
        evidence = f"rank {record.get('rank')} on {record.get('host', '?')}: {record.get('error', '')}"[:2000]
        state.data["oom"] = state.data.get("oom") or evidence
        if record.get("rank") != 0:  # rank 0's own event is in metrics.jsonl already
            metrics_record(run=run, records=[{"kind": "event", "type": "oom", "step": record.get("step") or 0,
                                              "time": record.get("ended_at"), "rank": record.get("rank"),
                                              "error": record.get("error", "")[:500]}])  # fmt: skip
        alert_raise(
            run=run,
            kind=AlertKind.OOM,
            severity=Severity.CRITICAL,
            step=record.get("step"),
            message=f"Out of memory on rank {record.get('rank')}",
            evidence=evidence,
        )
    return found
