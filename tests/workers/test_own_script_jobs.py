"""Own scripts launched by the product as their authors wrote them (real DeepSpeed launcher and processes): the
config in the form the script parses, the run directory as the working directory, the MLflow variables with a token
that works, and a crash whose exception (behind torch.distributed's "[rankN]: " prefix) names the failure."""

import json
import shutil
import textwrap
import time
from pathlib import Path

import pytest
from django.test import override_settings

from runs.models import MetricSeries, Run, RunStatus
from runs.services import joblogs
from runs.services.joblogs import log_tail
from runs.services.tokens import run_token_check
from tests.workers.test_launch_and_watch import UNREACHABLE, _follow, _tiny
from workers import launching, watching

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def runs_dir(tmp_path):
    scripts = [tmp_path, Path(__file__).resolve().parent / "scripts"]
    with override_settings(RUNS_DIR=tmp_path, CP_BASE_URL=UNREACHABLE, SCRIPT_ROOTS=scripts):
        yield tmp_path


def _own(operator, script, *, name, **own_script) -> Run:
    run = _tiny(operator, name=name, steps=4, trainer="own_script", script=str(script))
    if own_script:
        Run.objects.filter(pk=run.pk).update(config={**run.config, "own_script": own_script})
        run.refresh_from_db()
    return run


def test_an_own_script_gets_its_config_as_asked_its_run_directory_and_mlflow_settings(
    seeded, operator, runs_dir, tmp_path
):
    script = tmp_path / "hf_style.py"
    script.write_text(
        textwrap.dedent("""
        import json, os, sys
        if os.environ.get("RANK", "0") == "0":
            keys = ["CP_RUN_DIR", "CP_DS_CONFIG", "CP_BASE_URL", "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN"]
            seen = {"argv": sys.argv[1:], "cwd": os.getcwd(), "env": {k: os.environ.get(k) for k in keys}}
            open("seen.json", "w").write(json.dumps(seen))  # relative: lands in the working directory
    """)
    )
    run = _own(
        operator,
        script,
        name="as-written",
        ds_config_arg="--deepspeed",
        ds_config_style="hf",
        args=["--output_dir", "out dir", "--report_to", "mlflow"],
    )
    run = _follow(run)
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    run_dir = runs_dir / f"run-{run.pk}"
    seen = json.loads((run_dir / "seen.json").read_text())
    ds_path = str(run_dir / "ds_config.json")
    # DeepSpeed's launcher puts --local_rank first; the rest is the script's command line as configured.
    assert [a for a in seen["argv"] if not a.startswith("--local_rank")] == [
        "--deepspeed",
        ds_path,
        "--output_dir",
        "out dir",
        "--report_to",
        "mlflow",
    ]
    assert seen["cwd"] == str(run_dir)
    env = seen["env"]
    assert env["CP_RUN_DIR"] == str(run_dir) and env["CP_DS_CONFIG"] == ds_path
    assert env["MLFLOW_TRACKING_URI"] == f"http://127.0.0.1:9/api/v1/ingest/{run.pk}/mlflow"
    assert env["CP_BASE_URL"] == "http://127.0.0.1:9"
    # The job's own token, valid for this run (the job token of its attempt).
    assert run_token_check(run_id=run.pk, token=env["MLFLOW_TRACKING_TOKEN"]) is not None
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["optimizer"]["params"]["lr"] == "auto"


def test_an_own_script_may_take_its_config_from_the_environment_only(seeded, operator, runs_dir, tmp_path):
    script = tmp_path / "env_only.py"
    script.write_text(
        textwrap.dedent("""
        import json, os, sys
        assert not any("deepspeed" in a for a in sys.argv[1:]), sys.argv
        cfg = json.load(open(os.environ["CP_DS_CONFIG"]))
        assert isinstance(cfg["train_micro_batch_size_per_gpu"], int)
    """)
    )
    run = _follow(_own(operator, script, name="env-only", ds_config_arg="env"))
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason


TUTORIAL_LOOP = """
import argparse, os
import deepspeed, torch

parser = argparse.ArgumentParser()
parser.add_argument("--local_rank", type=int, default=-1)
parser = deepspeed.add_config_arguments(parser)
args = parser.parse_args()
model = torch.nn.Linear(8, 1)
engine, _, _, _ = deepspeed.initialize(args=args, model=model, model_parameters=model.parameters())
for step in range(1, 10):
    x = torch.randn(engine.train_micro_batch_size_per_gpu(), 8)
    loss = ((engine(x) - 1.0) ** 2).mean()
    engine.backward(loss)
    engine.step()
    if engine.global_rank == 0:
        print(f"step {step} loss {loss.item():.4f}", flush=True)
    if step == CRASH_AT and engine.global_rank == 0:
        raise ValueError(f"tokenizer returned an empty batch at step {step}")
    torch.distributed.barrier()
"""


@pytest.fixture
def crashing_loop(tmp_path):
    script = tmp_path / "tutorial_loop.py"
    script.write_text(TUTORIAL_LOOP.replace("CRASH_AT", "3"))
    return script


@pytest.mark.timeout(1200)
def test_a_deepspeed_loop_that_crashes_names_its_exception_and_rank(seeded, operator, runs_dir, crashing_loop):
    # Unchanged, the loop makes DeepSpeed build its shared-memory CPU op: minutes on a machine's first run (and for
    # each interpreter path: the include paths are part of torch's build key), seconds once cached.
    run = _own(operator, crashing_loop, name="crash")
    # No automatic relaunch: the failure itself is what the page must explain.
    Run.objects.filter(pk=run.pk).update(config={**run.config, "remediation": {"max_attempts": 0}})
    run = _follow(run, timeout=1100)
    assert run.status == RunStatus.FAILED
    assert run.failure_reason.startswith("ValueError: tokenizer returned an empty batch at step 3 (rank 0)")
    assert "the job exited with code" in run.failure_reason
    # The traceback is in the job's output, found by a search, and rank 0's lines by rank.
    tail = log_tail(run=run, stream="stderr", query="empty batch")
    assert any("[rank0]: ValueError: tokenizer returned an empty batch at step 3" in line.text for line in tail.lines)
    assert all(line.rank == 0 for line in log_tail(run=run, stream="stderr", rank=0).lines)
    assert run.last_step == 3  # its "step N loss X" lines were charted up to the crash


HF_SCRIPT = Path(__file__).resolve().parent / "scripts" / "hf_trainer_script.py"
HF_ARGS = [
    "--output_dir", "hf-out",
    "--max_steps", "6",
    "--logging_steps", "1",
    "--per_device_train_batch_size", "4",
    "--report_to", "none",
    "--disable_tqdm", "true",
    "--save_strategy", "no",
    "--use_cpu", "true",
]  # fmt: skip


def test_an_hf_trainer_script_runs_under_the_product_and_its_log_lines_are_charted(seeded, operator, runs_dir):
    """transformers' Trainer over DDP (gloo) on 2 CPU ranks started by DeepSpeed's launcher; the DeepSpeed config
    is not passed (ds_config_arg env): on CPU the Trainer's DeepSpeed path stalls building DeepSpeed's shared-memory
    op for minutes on a cold cache, which the GPU figure (bench/hf_trainer_gpu.py) covers instead."""
    run = _follow(_own(operator, HF_SCRIPT, name="hf-trainer", ds_config_arg="env", args=HF_ARGS), timeout=540)
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    series = {s.key: s for s in MetricSeries.objects.filter(run=run)}
    assert series["loss"].points == 6 and series["lr"].points == 6 and series["grad_norm"].points == 6
    assert {"train_runtime", "samples_per_s", "train_loss"} <= set(series)
    assert (runs_dir / f"run-{run.pk}" / "hf-out").is_dir()  # its output_dir, relative to the run directory


def test_the_page_is_told_while_the_job_compiles_an_op(seeded, operator, runs_dir, tmp_path):
    """A real process named ninja working in a folder named for the op, as torch's cpp_extension runs it."""
    script = tmp_path / "builds.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, shutil, subprocess
        if os.environ.get("RANK", "0") == "0":
            build = os.path.join(os.getcwd(), "torch_extensions", "fused_adam")
            os.makedirs(build)
            ninja = os.path.join(build, "ninja")
            shutil.copy({shutil.which("sleep")!r}, ninja)
            subprocess.run([ninja, "6"], cwd=build, check=True)
            print("Time to load fused_adam op: 6.0 seconds", flush=True)
    """)
    )
    run = _own(operator, script, name="compiles", ds_config_arg="env")
    assert launching.launch_run(run.pk).startswith("submitted")
    seen = set()
    deadline = time.monotonic() + 240
    while watching.watch_once(run.pk):
        assert time.monotonic() < deadline
        run.refresh_from_db()
        compiling = joblogs.compiling_now(run)
        if compiling:
            seen.add(compiling["op"])
            assert "compiling its fused_adam op" in _page(run)
        time.sleep(0.3)
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    assert seen == {"fused_adam"}
    assert joblogs.compiling_now(run) is None


def _page(run: Run) -> str:
    from django.template.loader import render_to_string

    return render_to_string("runs/_run_phase.html", {"compiling": joblogs.compiling_now(run), "run": run})
