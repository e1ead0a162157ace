"""Runs the prep stages one after another on local processes or Slurm, and keeps `progress.json` current.

Local: datatrove's LocalPipelineExecutor runs a stage's tasks in a pool of worker processes while this process
writes progress. Slurm: datatrove's SlurmPipelineExecutor submits each parallel stage as a job array; this
process waits for the array, reading the completion markers and the array's state from `squeue`, and cancels
what it submitted when it is stopped or a task fails. Stages of one task (finding duplicates, training the
tokenizer, the mix) run in this process's own allocation: a job of their own would only wait for the scheduler.

Resuming: every executor logs to `work/logs/<stage>/` and marks each finished task in `completions/`; run again
on the same job folder, the job skips finished tasks (and stages) and redoes only the rest. Task outputs are
written under temporary names and renamed when complete, so a killed task leaves nothing a later stage could
mistake for its output.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import multiprocess
from datatrove.executor import LocalPipelineExecutor, SlurmPipelineExecutor

from jobs.common.atomic import write_atomic, write_json
from jobs.data.prep import pipeline, report
from jobs.data.prep.spec import PrepSpec

REPO_ROOT = Path(__file__).resolve().parents[3]
# Imported once by the forkserver that every local stage's pool forks its workers from (the server outlives the
# stages), instead of by each worker of each stage: about half a second per worker on a loaded 2-core node.
PRELOAD = ["numpy", "orjson", "sentencepiece", "jobs.data.prep.pipeline"]
POLL_S = 1.0
SLURM_FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
                  "BOOT_FAIL", "DEADLINE"}  # fmt: skip


class StageFailed(RuntimeError):
    pass


class SlurmExecutor(SlurmPipelineExecutor):
    def launch_merge_stats(self) -> None:
        """No stats-merging job after each array: the driver merges the tasks' ledgers itself, and one more job per
        stage would only wait for the scheduler."""


class Driver:
    def __init__(self, spec: PrepSpec):
        self.spec = spec
        self.stages = pipeline.build(spec)
        self.names = [s.name for s in self.stages]
        self.started = time.time()
        self.seconds: dict[str, float] = {}
        self._slurm_names: list[str] = []

    # -- progress ---------------------------------------------------------------------------------------------

    def _expected_docs(self) -> int | None:
        counts = [s.documents for s in self.spec.sources if s.documents is not None]
        return sum(counts) if len(counts) == len(self.spec.sources) else None

    def _live(self, stage: str) -> dict[str, int]:
        """Documents the stage's tasks have read so far, per source (their progress files)."""
        folder = self.spec.work / "progress" / stage
        total: dict[str, int] = {}
        for path in folder.glob("*.json") if folder.is_dir() else []:
            try:
                by_source = json.loads(path.read_text()).get("by_source", {})
            except (OSError, ValueError):
                continue
            for source, n in by_source.items():
                total[source] = total.get(source, 0) + int(n)
        return total

    def _live_docs(self, stage: str) -> int:
        return sum(self._live(stage).values())

    def _counts(self) -> dict:
        """The counts of finished tasks, and while the filter stage runs, what its tasks have read so far."""
        counts = report.counts_so_far(self.spec)
        for source, docs in self._live("filter").items():
            stages = counts.setdefault(source, {})
            if docs > stages.get("read", {}).get("docs_in", 0):
                stages["read"] = {"docs_in": docs, "docs_out": docs, "chars_in": 0, "chars_out": 0, "tokens_out": 0}
        return counts

    def _completed(self, stage: str) -> int:
        folder = self.spec.work / "logs" / stage / "completions"
        return sum(1 for _ in folder.iterdir()) if folder.is_dir() else 0

    def progress(self, status: str, stage: str | None, message: str = "") -> None:
        done_weight = 0.0
        detail: dict = {}
        for s in self.stages:
            weight = pipeline.stage_weight(s.name)
            if s.name == stage:
                tasks_done = self._completed(s.name)
                share = tasks_done / s.tasks
                detail = {"tasks_done": tasks_done, "tasks": s.tasks}
                if s.name == "filter":
                    docs, expected = self._live_docs("filter"), self._expected_docs()
                    detail.update(docs=docs, expected_docs=expected)
                    if expected:
                        share = max(share, min(1.0, docs / expected))
                done_weight += weight * min(1.0, share)
                break
            done_weight += weight
        if status == "succeeded":
            done_weight = sum(pipeline.stage_weight(s.name) for s in self.stages)
        total_weight = sum(pipeline.stage_weight(s.name) for s in self.stages)
        write_json(
            self.spec.job_dir / "progress.json",
            {
                "status": status,
                "stage": stage,
                "stages": self.names,
                "fraction": round(done_weight / total_weight, 4),
                "detail": detail,
                "message": message,
                "counts": self._counts(),
                "updated_at": time.time(),
            },
        )

    # -- running ----------------------------------------------------------------------------------------------

    def run(self) -> dict:
        self._prepare()
        for stage in self.stages:
            t0 = time.perf_counter()
            self.progress("running", stage.name)
            if stage.name == "shard" and self.spec.settings["tokenizer"]["mode"] == "reuse":
                self._copy_tokenizer()
            if self.spec.executor.kind == "slurm" and stage.tasks > 1:
                self._run_slurm(stage)
            else:
                self._run_local(stage)
            self.seconds[stage.name] = self.seconds.get(stage.name, 0.0) + time.perf_counter() - t0
        result = report.build(self.spec, self.names, self.seconds, time.time() - self.started)
        write_json(self.spec.job_dir / "report.json", result)
        self.progress("succeeded", None, "done")
        return result

    def _prepare(self) -> None:
        (self.spec.job_dir / "report.json").unlink(missing_ok=True)
        shutil.rmtree(self.spec.work / "errors", ignore_errors=True)
        if self.spec.settings["dedup"]["near"] == "minhash":
            language = pipeline.minhash_language(self.spec)
            for module in ("spacy", *(("jieba",) if language == "cmn" else ())):
                try:
                    __import__(module)
                except ImportError as exc:
                    raise StageFailed(
                        f"MinHash deduplication uses datatrove's word tokenizer for {language!r}, which needs "
                        f"{module} on the nodes ({exc}); install it or choose SimHash"
                    ) from None

    def _copy_tokenizer(self) -> None:
        source = Path(self.spec.settings["tokenizer"]["path"])
        if not source.is_file():
            raise StageFailed(f"tokenizer.path {source} is not a file; give a SentencePiece .model file")
        write_atomic(pipeline.tokenizer_path(self.spec), source.read_bytes())

    def _run_local(self, stage: pipeline.Stage) -> None:
        workers = max(1, min(self.spec.executor.workers, stage.tasks))
        multiprocess.get_context("forkserver").set_forkserver_preload(PRELOAD)
        executor = LocalPipelineExecutor(
            pipeline=stage.pipeline,
            tasks=stage.tasks,
            workers=workers,
            logging_dir=str(self.spec.work / "logs" / stage.name),
            start_method="forkserver",
        )
        failure: list[BaseException] = []

        def target() -> None:
            try:
                executor.run()
            except BaseException as exc:  # handed to the main thread
                failure.append(exc)

        thread = threading.Thread(target=target, name=f"stage-{stage.name}", daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(POLL_S)
            self.progress("running", stage.name)
        if failure:
            raise StageFailed(self._error_message(stage.name) or f"stage {stage.name} failed: {failure[0]}")
        missing = stage.tasks - self._completed(stage.name)
        if missing:
            raise StageFailed(
                self._error_message(stage.name) or f"stage {stage.name}: {missing} task(s) did not finish"
            )

    def _run_slurm(self, stage: pipeline.Stage) -> None:
        e = self.spec.executor
        name = f"cp-prep-{self.spec.job_id}-{stage.name.replace('_', '-')}"
        repo = shlex.quote(str(REPO_ROOT))
        venv_bin = shlex.quote(str(Path(sys.executable).parent))
        executor = SlurmExecutor(
            pipeline=stage.pipeline,
            tasks=stage.tasks,
            time=str(e.time_limit_min),
            partition=e.partition,
            cpus_per_task=e.cpus_per_task,
            mem_per_cpu_gb=e.mem_per_cpu_gb,
            job_name=name,
            qos="",
            env_command=f"cd {repo} && export PYTHONPATH={repo} PATH={venv_bin}:$PATH OMP_NUM_THREADS=1",
            logging_dir=str(self.spec.work / "logs" / stage.name),
            requeue=False,
        )
        if not executor.get_incomplete_ranks():
            return
        self._slurm_names.append(name)
        executor.run()  # submits the array
        job_id = str(executor.job_id)
        while True:
            time.sleep(POLL_S)
            self.progress("running", stage.name)
            if not executor.get_incomplete_ranks(skip_completed=True):
                return
            states = _array_states(job_id)
            if states is not None and (not states or all(s in SLURM_FINISHED for s in states)):
                if not executor.get_incomplete_ranks(skip_completed=True):
                    return
                message = self._error_message(stage.name) or self._slurm_log_tail(stage.name)
                raise StageFailed(message or f"stage {stage.name}: Slurm job {job_id} ended with tasks unfinished")

    def cancel_slurm(self) -> None:
        for name in self._slurm_names:
            subprocess.run(["scancel", f"--name={name}"], capture_output=True, timeout=60, check=False)

    def _error_message(self, stage: str) -> str:
        errors = self.spec.work / "errors"
        for path in sorted(errors.glob(f"{stage}-*.json")) if errors.is_dir() else []:
            try:
                return str(json.loads(path.read_text())["message"])
            except (OSError, ValueError, KeyError):
                continue
        return ""

    def _slurm_log_tail(self, stage: str) -> str:
        logs = sorted((self.spec.work / "logs" / stage / "slurm_logs").glob("*.out"))
        for path in logs:
            lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
            errors = [ln for ln in lines if "Error" in ln or "error" in ln]
            if errors:
                return f"stage {stage}: {errors[-1][-400:]}"
        return ""


def _array_states(job_id: str) -> list[str] | None:
    """States of an array job's tasks (an empty list when Slurm no longer knows it; None if squeue failed)."""
    try:
        result = subprocess.run(
            ["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return [] if "Invalid job id" in result.stderr else None
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def run(spec: PrepSpec) -> int:
    try:
        driver = Driver(spec)
    except Exception as exc:  # a stage that cannot be built (a missing dependency): fail like any stage
        message = f"{type(exc).__name__}: {exc}"
        write_json(spec.job_dir / "progress.json", {"status": "failed", "stage": None, "fraction": 0.0,
                                                    "message": message, "updated_at": time.time()})  # fmt: skip
        print(f"prep: error: {message}", file=sys.stderr)
        return 1
    if spec.executor.kind == "slurm":
        # The stage arrays inherit this process's environment (datatrove submits with --export=ALL); the driver's
        # own Slurm variables would make them look like steps of the driver's job.
        for key in [k for k in os.environ if k.startswith(("SLURM_", "SBATCH_", "SRUN_"))]:
            del os.environ[key]

    def stop(signum, _frame) -> None:
        driver.cancel_slurm()
        driver.progress("failed", None, f"stopped by signal {signum}")
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        driver.run()
    except Exception as exc:
        driver.cancel_slurm()
        message = str(exc) if isinstance(exc, StageFailed) else f"{type(exc).__name__}: {exc}"
        driver.progress("failed", None, message)
        print(f"prep: error: {message}", file=sys.stderr)
        return 1
    print("prep: done", file=sys.stderr)
    return 0
