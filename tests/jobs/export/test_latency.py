"""The latency job on a tiny artifact dir (base + nf4; int8 absent), as the cluster runs it: a subprocess."""

from __future__ import annotations

import json
import subprocess

from tests.jobs.conftest import PYTHON, REPO, trainer_env
from tests.jobs.tiny_models import export_llama, quantize

FIELDS = ("name", "prefill_ms", "decode_ms_per_token", "decode_tokens_per_s", "eager_generate_ms_per_token",
          "speedup_vs_eager", "memory_bytes")  # fmt: skip


def test_latency_job_writes_the_report(tmp_path):
    art = tmp_path / "artifact"
    export_llama(art / "base", dtype="bf16")
    quantize(art / "base", art / "nf4", kind="nf4")
    out = tmp_path / "out" / "latency.json"
    proc = subprocess.run([PYTHON, "-m", "jobs.export.latency", "--artifact-dir", str(art), "--out", str(out),
                           "--prefill-tokens", "40", "--decode-tokens", "8", "--repeats", "1"],
                          cwd=REPO, env=trainer_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("LATENCY_REPORT ")]
    assert json.loads(line[-1].removeprefix("LATENCY_REPORT ")) == report
    assert report["device"] == "cpu" and report["prefill_tokens"] == 40
    assert [v["name"] for v in report["variants"]] == ["base", "nf4"] and report["skipped"] == ["int8"]
    for v in report["variants"]:
        assert all(v[f] is not None for f in FIELDS)
        assert v["prefill_ms"] > 0 and v["decode_ms_per_token"] > 0 and v["memory_bytes"] > 0
        assert abs(v["decode_tokens_per_s"] - 1000 / v["decode_ms_per_token"]) < 0.05 * v["decode_tokens_per_s"]
        assert abs(v["speedup_vs_eager"] - v["eager_generate_ms_per_token"] / v["decode_ms_per_token"]) < 0.05
        assert v["engine_path"] == "llama-fast"
    assert report["variants"][1]["weights"] == "nf4"


def test_latency_job_refuses_bad_arguments(tmp_path):
    proc = subprocess.run([PYTHON, "-m", "jobs.export.latency", "--artifact-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                           "--variants", "base,fp8"], cwd=REPO, env=trainer_env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "unknown fp8" in proc.stderr
