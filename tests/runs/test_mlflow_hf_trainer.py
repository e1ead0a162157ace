"""An unmodified Hugging Face Trainer with report_to=["mlflow"] logs into a run through the compatibility API, its
checkpoints included (HF_MLFLOW_LOG_ARTIFACTS=1, which crashed at the first checkpoint before logged models and the
artifact proxy were served). The trainer runs in its own process and working directory, on CPU, for a few steps."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from runs.models import MlflowMetric, Run
from runs.services.mlflow_artifacts import artifact_root
from runs.services.tokens import run_token_issue, token_cache_clear
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db(transaction=True)
pytest.importorskip("mlflow")
pytest.importorskip("transformers")

TRAINER = textwrap.dedent(
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=1, n_head=2))


    class Tokens(torch.utils.data.Dataset):
        def __len__(self):
            return 32

        def __getitem__(self, i):
            ids = (torch.arange(16) * (i % 5 + 1)) % 64
            return {"input_ids": ids, "labels": ids}


    args = TrainingArguments(
        output_dir="out", max_steps=4, per_device_train_batch_size=4, logging_steps=1, save_steps=2,
        report_to=["mlflow"], run_name="hf-tiny", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=Tokens()).train()
    print("TRAINED")
    """
)


def test_an_hf_trainer_with_report_to_mlflow_logs_metrics_params_and_checkpoints_into_the_run(
    seeded, operator, live_server, settings, tmp_path
):
    settings.RUNS_DIR = tmp_path / "control-plane" / "runs"
    token_cache_clear()
    run = tiny_run(owner=operator)
    workdir = tmp_path / "trainer"
    workdir.mkdir()
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(workdir),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": f"{live_server.url}/api/v1/ingest/{run.pk}/mlflow",
        "MLFLOW_TRACKING_TOKEN": run_token_issue(run=run, kind="operator").secret,
        "MLFLOW_EXPERIMENT_NAME": "hf-tiny",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "HF_MLFLOW_LOG_ARTIFACTS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", TRAINER], cwd=workdir, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0 and "TRAINED" in done.stdout, (done.stdout + done.stderr)[-5000:]

    stored = Run.objects.get(pk=run.pk)
    assert stored.mlflow_params["max_steps"] == "4" and stored.mlflow_params["n_embd"] == "16"
    assert stored.mlflow_run["status"] == "FINISHED" and stored.mlflow_run["experiment_name"] == "hf-tiny"
    assert stored.mlflow_run["run_name"] == "hf-tiny"
    losses = MlflowMetric.objects.filter(run=run, key="loss").order_by("step")
    assert [m.step for m in losses] == [1, 2, 3, 4]
    assert MlflowMetric.objects.filter(run=run, key="train_runtime").exists()

    models = sorted(stored.mlflow_run["models"].values(), key=lambda m: m["name"])
    assert [(m["name"], m["status"]) for m in models] == [
        ("checkpoint-2", "LOGGED_MODEL_READY"),
        ("checkpoint-4", "LOGGED_MODEL_READY"),
    ]
    for model in models:
        files = artifact_root(run) / "models" / model["model_id"] / "artifacts"
        assert (files / "MLmodel").is_file()
        weights = sorted(p.name for p in files.rglob("model.safetensors"))
        assert weights == ["model.safetensors"]
        name = model["name"]
        local = workdir / "out" / name / "model.safetensors"
        assert next(files.rglob("model.safetensors")).read_bytes() == local.read_bytes()
