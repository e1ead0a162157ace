"""Launcher and watcher on a real DeepSpeed job: a queued run becomes a job, its metrics, checkpoints and failures
reach the database even with no HTTP push at all (the watcher reads the run directory)."""

import json
import textwrap
import time

import pytest
from django.test import override_settings

from runs.models import Alert, AlertKind, Checkpoint, MetricSeries, Run, RunStatus
from runs.planning.presets import preset_config
from runs.services.runs import run_create, run_launch
from workers import launching, watching

pytestmark = pytest.mark.django_db(transaction=True)

# An address nothing listens on: every push fails, so all that arrives comes through the watcher.
UNREACHABLE = "http://127.0.0.1:9"


def _tiny(
    owner,
    *,
    name: str,
    steps: int,
    trainer: str = "reference",
    script: str = "",
    cluster: str = "local-cpu",
    **training,
) -> Run:
    from runs.models import Cluster, DataMixRecipe

    cfg = preset_config("tiny")
    cfg["training"]["token_budget"] = 2048 * steps
    cfg["training"]["checkpoint_interval"] = max(1, steps // 2)
    cfg["remediation"].update(training.pop("remediation", {}))
    cfg["training"].update(training)
    cfg["optimizer"]["warmup_steps"] = 2
    cfg["curriculum"] = [{"start_step": 0, "seq_len": 32}, {"start_step": steps // 2, "seq_len": 64}]
    run = run_create(
        owner=owner,
        name=name,
        preset="tiny",
        trainer=trainer,
        script_path=script,
        cluster=Cluster.objects.get(name=cluster),
        recipe=DataMixRecipe.objects.get(name="bilingual-demo"),
        config=cfg,
    )
    return run_launch(actor=owner, run=run)


def _follow(run: Run, timeout: float = 240) -> Run:
    assert launching.launch_run(run.pk).startswith("submitted")
    return _watch(run, timeout)


def _watch(run: Run, timeout: float = 240) -> Run:
    deadline = time.monotonic() + timeout
    while watching.watch_once(run.pk):
        assert time.monotonic() < deadline, (run.refresh_from_db(), run.status)
        time.sleep(0.5)
    run.refresh_from_db()
    return run


@pytest.fixture
def runs_dir(tmp_path):
    with override_settings(RUNS_DIR=tmp_path, CP_BASE_URL=UNREACHABLE):
        yield tmp_path


def test_reference_trainer_run_is_followed_to_success(seeded, operator, runs_dir):
    run = _follow(_tiny(operator, name="watched", steps=6))
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    loss = MetricSeries.objects.get(run=run, key="loss")
    assert loss.points == 6 and loss.last_step == 6
    assert set(Checkpoint.objects.filter(run=run).values_list("step", flat=True)) == {3, 6}
    run_json = json.loads((runs_dir / f"run-{run.pk}" / "run.json").read_text())
    assert run_json["run"]["id"] == run.pk and run_json["reporter"]["ingest_url"].endswith(f"/ingest/{run.pk}/")
    assert oct((runs_dir / f"run-{run.pk}" / "token").stat().st_mode)[-3:] == "600"
    assert not Alert.objects.filter(run=run).exists()


def test_injected_oom_fails_the_run_with_an_alert_when_the_policy_remedies_no_oom(
    seeded, operator, runs_dir, monkeypatch
):
    # The tiny preset's remediation relaunches OOM runs (tests/workers/test_remediation_jobs.py covers that path);
    # with an empty OOM ladder the watcher must still fail the run, name the OOM, and alert once.
    monkeypatch.setenv("CP_INJECT_OOM_AT_STEP", "2")
    run = _follow(_tiny(operator, name="oom", steps=6, remediation={"oom": []}))
    assert run.status == RunStatus.FAILED and "out of memory" in run.failure_reason
    assert Alert.objects.filter(run=run, kind=AlertKind.OOM).count() == 1


def test_resume_by_a_person_supersedes_the_points_after_its_checkpoint(seeded, operator, runs_dir):
    from runs.metrics.reads import series_all_points
    from runs.services.checkpoints import checkpoint_resume

    run = _follow(_tiny(operator, name="resumed", steps=6))
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    run = checkpoint_resume(checkpoint=Checkpoint.objects.get(run=run, step=3), actor=operator)
    assert launching.launch_run(run.pk).startswith("submitted")
    # Before the resumed job reports anything, the steps it redoes are no longer stored from attempt 1.
    assert MetricSeries.objects.get(run=run, key="loss").last_step == 3
    run = _watch(run)
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    steps = [int(s) for s in series_all_points(run_id=run.pk, key="loss")[0]]
    assert steps == [1, 2, 3, 4, 5, 6], "each step stored once, steps 4-6 from the resumed attempt"


def test_own_script_loss_lines_are_watched(seeded, operator, runs_dir, tmp_path):
    script = tmp_path / "my_train.py"
    script.write_text(
        textwrap.dedent("""
        import argparse, os
        p = argparse.ArgumentParser(); p.add_argument("--deepspeed_config"); p.add_argument("--local_rank", type=int)
        args = p.parse_args()
        assert os.path.exists(args.deepspeed_config)
        if os.environ.get("RANK", "0") == "0":
            for step in range(1, 6):
                print(f"step {step} | loss {4.0 / step:.4f}", flush=True)
            print("step 6 | loss nan", flush=True)
    """)
    )
    with override_settings(SCRIPT_ROOTS=[tmp_path]):
        run = _follow(_tiny(operator, name="byo", steps=6, trainer="own_script", script=str(script)))
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    assert MetricSeries.objects.get(run=run, key="loss").points == 6
    assert Alert.objects.filter(run=run, kind=AlertKind.NAN).exists()


def test_own_script_outside_the_script_folders_is_refused_with_the_field(seeded, operator, runs_dir, tmp_path):
    from runs.services.runs import RunInvalid

    script = tmp_path / "elsewhere.py"
    script.write_text("print(1)")
    with pytest.raises(RunInvalid) as refused:
        _tiny(operator, name="byo-outside", steps=6, trainer="own_script", script=str(script))
    assert [issue.field for issue in refused.value.issues] == ["script_path"]
    assert "CP_SCRIPT_ROOTS" in refused.value.issues[0].message


def test_the_same_launch_on_a_real_slurm(seeded, operator, runs_dir, slurm_cluster):
    from runs.models import BackendKind, Cluster

    Cluster.objects.create(
        name="slurm-local",
        backend=BackendKind.SLURM,
        nodes=1,
        gpus_per_node=2,
        accelerator="cpu",
        gpu_type="CPU",
        gpu_memory_gb=8,
        partition="debug",
    )
    run = _follow(_tiny(operator, name="on-slurm", steps=4, cluster="slurm-local"))
    assert run.status == RunStatus.SUCCEEDED, run.failure_reason
    assert run.backend_job_id.isdigit()
    assert MetricSeries.objects.get(run=run, key="loss").points == 4
    assert (runs_dir / f"run-{run.pk}" / "job.sbatch").exists()
