"""How a script reaches one run: its base URL, MLflow tracking URI, the environment an own-script job gets, and the
ready-to-paste snippets the run page shows beside a token.

The base URL is CP_BASE_URL; `manage.py up` sets it from the address it listens on unless the environment gives it.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import NamedTuple

from django.conf import settings

from runs.models import Run
from runs.services.tokens import run_tokens

# Shown in snippets where the token goes until one is issued; a real token starts with cpt_.
TOKEN_PLACEHOLDER = "<issue a token below>"


def base_url() -> str:
    return settings.CP_BASE_URL.rstrip("/")


def run_url(run: Run) -> str:
    return f"{base_url()}/runs/{run.pk}/"


def ingest_url(run: Run) -> str:
    return f"{base_url()}/api/v1/ingest/{run.pk}/"


def tracking_uri(run: Run) -> str:
    """What MLFLOW_TRACKING_URI is for this run (runs.views.mlflow_compat answers under it)."""
    return f"{base_url()}/api/v1/ingest/{run.pk}/mlflow"


def job_env(*, run: Run, run_dir: Path, token: str) -> dict[str, str]:
    """The variables an own-script job gets on top of the backend's: where it runs, its DeepSpeed config, and what
    an MLflow client or jobs.reporter needs to log into this run."""
    return {
        "CP_RUN_DIR": str(run_dir),
        "CP_RUN_ID": str(run.pk),
        "CP_BASE_URL": base_url(),
        "CP_INGEST_URL": ingest_url(run),
        "CP_DS_CONFIG": str(run_dir / "ds_config.json"),
        "MLFLOW_TRACKING_URI": tracking_uri(run),
        "MLFLOW_TRACKING_TOKEN": token,
    }


class Snippet(NamedTuple):
    key: str
    title: str
    text: str


def snippets(run: Run, token: str = "") -> list[Snippet]:
    """Copy-and-paste text for a script run outside the product (or to try the API by hand)."""
    secret = token or TOKEN_PLACEHOLDER
    uri = tracking_uri(run)
    env = f"export MLFLOW_TRACKING_URI={shlex.quote(uri)}\nexport MLFLOW_TRACKING_TOKEN={shlex.quote(secret)}"
    hf = (
        "# environment: the two export lines above, then\n"
        "TrainingArguments(\n"
        "    output_dir=...,\n"
        '    report_to=["mlflow"],\n'
        "    logging_steps=10,\n"
        f'    run_name="{run.name}",\n'
        ")\n"
        "# a DeepSpeed run of it: own_script.ds_config_arg --deepspeed, own_script.ds_config_style hf"
    )
    body = '{"records": [{"kind": "metrics", "step": 1, "values": {"loss": 2.5}}]}'
    curl = (
        f"curl -sS -X POST {shlex.quote(ingest_url(run))} \\\n"
        f"  -H {shlex.quote('Authorization: Bearer ' + secret)} \\\n"
        f"  -H 'Content-Type: application/json' \\\n"
        f"  -d {shlex.quote(body)}"
    )
    python = (
        "import mlflow  # reads MLFLOW_TRACKING_URI and MLFLOW_TRACKING_TOKEN\n"
        "with mlflow.start_run():\n"
        '    mlflow.log_param("lr", 3e-4)\n'
        "    for step in range(1, 101):\n"
        '        mlflow.log_metric("loss", 1.0 / step, step=step)'
    )
    return [
        Snippet("env", "MLflow environment", env),
        Snippet("hf", "Hugging Face Trainer", hf),
        Snippet("python", "mlflow client", python),
        Snippet("curl", "curl", curl),
    ]


def connect_context(run: Run, *, issued: str = "") -> dict:
    """The run page's connect panel (operators only): addresses, snippets (with the token just issued, if any) and
    the run's tokens with their state now."""
    return {
        "connect": {
            "base_url": base_url(),
            "run_url": run_url(run),
            "ingest_url": ingest_url(run),
            "tracking_uri": tracking_uri(run),
            "snippets": snippets(run, issued),
            "issued": issued,
            "tokens": run_tokens(run=run),
            "job_env": sorted(job_env(run=run, run_dir=Path("RUN_DIR"), token="…")),
        }
    }
