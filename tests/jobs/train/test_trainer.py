"""The reference trainer run as real processes: launchers, data/expert parallelism, metrics, checkpoints, resume."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest
import torch

from jobs.common.run_config import parse_run_config
from jobs.export.hf import checkpoint_state_dict
from jobs.train.checkpoint import read_index
from jobs.train.model import build_model
from jobs.train.rendezvous import first_slurm_host, launch_env
from jobs.train.trainer import main
from tests.jobs.conftest import (
    PYTHON,
    REPO,
    describe,
    events,
    free_port,
    job_status,
    metrics_by_step,
    read_records,
    run_trainer,
    tiny_run,
    trainer_env,
    write_run,
)

STEPS = 4


def _losses(run_dir) -> dict[int, float]:
    return {s: v["loss"] for s, v in metrics_by_step(read_records(run_dir)).items()}


@pytest.fixture(scope="module")
def single_rank_run(tmp_path_factory):
    """One process, no launcher: the reference the parallel runs must reproduce."""
    run_dir = write_run(tmp_path_factory.mktemp("single") / "run", tiny_run(training={"total_steps": STEPS}))
    proc = run_trainer(run_dir, launcher="none")
    assert proc.returncode == 0, describe(proc)
    return run_dir


def test_single_process_run_writes_metrics_events_and_checkpoints(single_rank_run):
    records = read_records(single_rank_run)
    metrics = metrics_by_step(records)
    assert sorted(metrics) == [1, 2, 3, 4]
    last = metrics[STEPS]
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "samples_per_s", "mfu", "mem_gb", "aux_loss",
                "tokens/zh", "tokens/en", "tokens/other", "expert_load/0"):  # fmt: skip
        assert key in last, key
    # A source's loss is reported on the steps that drew from it.
    for source in ("zh", "en", "other"):
        assert any(f"loss/{source}" in v for v in metrics.values()), source
    cfg = parse_run_config(tiny_run())
    # Cumulative per-source tokens add up to every token trained on, curriculum stages included.
    assert sum(last[f"tokens/{s}"] for s in ("zh", "en", "other")) == STEPS * cfg.tokens_per_step(1)
    assert math.isclose(sum(last[f"expert_load/{i}"] for i in range(4)), 1.0, rel_tol=1e-9)
    assert [metrics[s]["seq_len"] for s in range(1, 5)] == [16, 16, 16, 32]
    assert metrics[2]["lr"] == pytest.approx(0.003)
    assert all(math.isfinite(v["loss"]) and v["loss"] < 9.0 for v in metrics.values())
    assert len(events(records, "started")) == 1
    assert [e["step"] for e in events(records, "checkpoint_saved")] == [2, 4]
    assert events(records, "finished")[0]["step"] == STEPS
    assert {r["step"] for r in records if r["kind"] == "heartbeat"} == {1, 2, 3, 4}
    index = read_index(single_rank_run / "checkpoints")
    assert [e["tag"] for e in index] == ["step_000002", "step_000004"]
    assert all(e["bytes"] > 0 and e["metrics"]["loss"] > 0 for e in index)
    ds = json.loads((single_rank_run / "ds_config.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2 and ds["gradient_accumulation_steps"] == 2


def test_two_ranks_zero2_under_deepspeed_launcher_match_one_rank(tmp_path, single_rank_run):
    """Data parallelism over 2 ranks (half the micro-batch each, same global batch) gives the same losses."""
    run_dir = write_run(tmp_path / "run", tiny_run(batch={"micro_batch": 2}, training={"total_steps": STEPS}))
    proc = run_trainer(run_dir, nproc=2, launcher="deepspeed")
    assert proc.returncode == 0, describe(proc)
    assert job_status(proc) == {"status": "succeeded", "step": STEPS, "loss": pytest.approx(_losses(run_dir)[STEPS])}
    assert proc.stdout.count("JOB_STATUS ") == 1
    ours, ref = _losses(run_dir), _losses(single_rank_run)
    assert ours.keys() == ref.keys()
    for step in ref:
        assert ours[step] == pytest.approx(ref[step], abs=1e-5)
    tag_dir = run_dir / "checkpoints" / "step_000004"
    assert (tag_dir / "zero_pp_rank_1_mp_rank_00_optim_states.pt").exists()
    last = metrics_by_step(read_records(run_dir))[STEPS]
    assert last["tokens/zh"] == metrics_by_step(read_records(single_rank_run))[STEPS]["tokens/zh"]


def _srun_like(run_dir, nproc: int) -> list[subprocess.Popen]:
    """Start ranks the way srun does: SLURM_* variables and no RANK/WORLD_SIZE/MASTER_ADDR (jobs.train derives them).

    MASTER_PORT is given because the port derived from SLURM_JOB_ID might be taken on a shared test machine.
    """
    port = str(free_port())
    procs = []
    for rank in range(nproc):
        env = trainer_env(SLURM_PROCID=str(rank), SLURM_NTASKS=str(nproc), SLURM_LOCALID=str(rank),
                          SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="4242", MASTER_PORT=port)  # fmt: skip
        procs.append(
            subprocess.Popen(
                [PYTHON, "-m", "jobs.train", "--run-dir", str(run_dir)],
                cwd=REPO,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    return procs


def test_expert_parallel_two_ranks_under_srun_env_matches_unsharded(tmp_path, single_rank_run):
    """EP 2 really shards the experts (each rank holds 2 of 4) and still computes the unsharded model's losses."""
    run_dir = write_run(
        tmp_path / "run", tiny_run(parallel={"ep": 2}, batch={"micro_batch": 2}, training={"total_steps": STEPS})
    )
    procs = _srun_like(run_dir, 2)
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, f"{out[-3000:]}\n{err[-5000:]}"
    assert outs[0][0].rstrip().splitlines()[-1].startswith("JOB_STATUS ")
    assert "JOB_STATUS" not in outs[1][0]
    ours, ref = _losses(run_dir), _losses(single_rank_run)
    for step in ref:
        assert ours[step] == pytest.approx(ref[step], abs=1e-5)
    load = metrics_by_step(read_records(run_dir))[STEPS]
    assert {k for k in load if k.startswith("expert_load/")} == {f"expert_load/{i}" for i in range(4)}

    tag_dir = run_dir / "checkpoints" / "step_000004"
    assert sorted(p.name for p in tag_dir.glob("layer_*")) == [
        f"layer_0_expert_{i}_mp_rank_00_model_states.pt" for i in range(4)
    ]
    # Expert i of the EP run equals expert i of the unsharded run: rank 1 held experts 2 and 3.
    merged = checkpoint_state_dict(tag_dir)
    reference = checkpoint_state_dict(single_rank_run / "checkpoints" / "step_000004")
    assert merged.keys() == reference.keys()
    for name in reference:
        torch.testing.assert_close(merged[name], reference[name], rtol=1e-4, atol=1e-5, msg=name)
    model = build_model(parse_run_config(tiny_run()).model, seed=0)
    model.load_state_dict(merged)


def _copy_until(run_dir, dest, step: int):
    """A copy of a finished run directory as it was right after checkpoint `step` (later files removed)."""
    shutil.copytree(run_dir, dest)
    for entry in read_index(dest / "checkpoints"):
        if entry["step"] > step:
            shutil.rmtree(dest / "checkpoints" / entry["tag"])
    (dest / "metrics.jsonl").unlink()
    (dest / "metrics.acked").unlink(missing_ok=True)
    return dest


def test_resume_reproduces_the_uninterrupted_loss_sequence(tmp_path):
    raw = tiny_run(training={"total_steps": 6, "checkpoint_interval": 3, "token_budget": 1536})
    full = write_run(tmp_path / "full", raw)
    proc = run_trainer(full, launcher="none")
    assert proc.returncode == 0, describe(proc)
    resumed = _copy_until(full, tmp_path / "resumed", 3)
    proc = run_trainer(resumed, "--resume", "step_000003", launcher="none")
    assert proc.returncode == 0, describe(proc)
    ref, ours = _losses(full), _losses(resumed)
    assert sorted(ours) == [4, 5, 6]
    for step in (4, 5, 6):
        assert ours[step] == pytest.approx(ref[step], abs=1e-6)
    started = events(read_records(resumed), "started")[0]
    assert started["step"] == 3 and started["resumed_from"] == "step_000003"
    ref_metrics, our_metrics = metrics_by_step(read_records(full)), metrics_by_step(read_records(resumed))
    assert our_metrics[6]["tokens/zh"] == ref_metrics[6]["tokens/zh"]


def test_zero3_bf16_activation_checkpointing_and_offload(tmp_path):
    """The other memory-saving layouts run end to end: ZeRO-3 + bf16 + activation checkpointing + param offload."""
    run_dir = write_run(
        tmp_path / "run",
        tiny_run(
            precision="bf16",
            training={"total_steps": 2},
            parallel={
                "zero_stage": 3,
                "activation_checkpointing": True,
                "offload_param": True,
                "offload_optimizer": True,
            },
        ),  # fmt: skip
    )
    proc = run_trainer(run_dir, launcher="none")
    assert proc.returncode == 0, describe(proc)
    metrics = metrics_by_step(read_records(run_dir))
    assert sorted(metrics) == [1, 2] and all(math.isfinite(v["loss"]) for v in metrics.values())
    ds = json.loads((run_dir / "ds_config.json").read_text())
    assert ds["bf16"]["enabled"] and ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    state = checkpoint_state_dict(run_dir / "checkpoints" / "step_000002")
    assert "layers.1.mlp.experts.deepspeed_moe.experts.deepspeed_experts.3.down_proj.weight" in state


def test_capabilities_flag_prints_the_capabilities_file(capsys):
    assert main(["--capabilities"]) == 0
    caps = json.loads(capsys.readouterr().out)
    assert caps["tp"] == [1, 2, 4, 8] and caps["ep"] is True and set(caps["reasons"]) >= {"tp", "pp", "sp"}
    assert caps == json.loads((REPO / "jobs" / "train" / "capabilities.json").read_text())


def test_invalid_run_json_exits_1_naming_the_field(tmp_path, monkeypatch, capsys):
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    run_dir = write_run(tmp_path / "run", tiny_run(model={"top_k": 9}))
    assert main(["--run-dir", str(run_dir)]) == 1
    out = capsys.readouterr().out.strip().splitlines()[-1]
    status = json.loads(out.removeprefix("JOB_STATUS "))
    assert status["status"] == "error" and "model.top_k" in status["error"]


def test_launch_env_maps_slurm_and_fills_in_a_lone_process():
    slurm = launch_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                        "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "12345"})  # fmt: skip
    assert slurm == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07", "MASTER_PORT": "32345"}
    assert launch_env({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}) == {}
    lone = launch_env({})
    assert lone["RANK"] == "0" and lone["WORLD_SIZE"] == "1" and int(lone["MASTER_PORT"]) > 0


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [("node1", "node1"), ("a,b", "a"), ("gpu[03-05,9],cpu1", "gpu03"), ("rack[2,4]-ib", "rack2-ib")],
)
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_a_new_run_directory_resumes_from_another_runs_checkpoint_folder(tmp_path):
    """The control plane's resume and fork buttons: a child run starts from the parent's checkpoint by path."""
    raw = tiny_run(training={"total_steps": 6, "checkpoint_interval": 3, "token_budget": 1536})
    full = write_run(tmp_path / "full", raw)
    proc = run_trainer(full, launcher="none")
    assert proc.returncode == 0, describe(proc)
    child = write_run(tmp_path / "child", raw)
    parent_checkpoint = (full / "checkpoints" / "step_000003").resolve()
    proc = run_trainer(child, "--resume", str(parent_checkpoint), launcher="none")
    assert proc.returncode == 0, describe(proc)
    ref, ours = _losses(full), _losses(child)
    assert sorted(ours) == [4, 5, 6]
    for step in (4, 5, 6):
        assert ours[step] == pytest.approx(ref[step], abs=1e-6)
    assert (child / "checkpoints" / "step_000006").is_dir()
