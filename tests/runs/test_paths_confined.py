"""Every path a job or a token sends stays inside that run's directory: checkpoint paths in ingest events (over the
API and from the run directory's file), retention, resume and quantize. Hostile paths ('..', absolute elsewhere,
symlinks out, NUL, very long) are refused with a 4xx naming the field."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.test import Client, override_settings
from hypothesis import given
from hypothesis import strategies as st

from runs.models import Checkpoint
from runs.services.artifacts import ServingRefused, artifact_create
from runs.services.checkpoints import checkpoint_retention_apply
from runs.services.paths import PathRefused, confine
from runs.services.rundir import run_dir_path
from runs.services.tokens import run_token_issue, token_cache_clear
from tests.fuzz import count, fuzz_settings
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db

HOSTILE = [
    "../run-1/checkpoints/step_1",
    "checkpoints/../../run-1",
    "/etc/passwd",
    "/",
    "..",
    "link_out",
    "link_out/step_1",
    "checkpoints/link_up/run-1",
    "checkpoints/step_1\0/etc",
    "a" * 501,
    "/" + "b/" * 300,
    "",
]


@pytest.fixture
def runs_dir(tmp_path):
    with override_settings(RUNS_DIR=tmp_path / "runs"):
        yield tmp_path / "runs"


def _layout(run_dir: Path, other: Path) -> None:
    """A run directory with a real checkpoint folder and links pointing out of it."""
    (run_dir / "checkpoints" / "step_1").mkdir(parents=True, exist_ok=True)
    (other / "checkpoints" / "step_1").mkdir(parents=True, exist_ok=True)
    for link, target in ((run_dir / "link_out", other), (run_dir / "checkpoints" / "link_up", run_dir.parent)):
        if not link.is_symlink():
            link.symlink_to(target)


paths = st.one_of(
    st.sampled_from(HOSTILE),
    st.lists(
        st.sampled_from(["..", ".", "checkpoints", "step_1", "", "link_out", "link_up", "run-1", "\0", "x" * 120]),
        max_size=8,
    ).map("/".join),
    st.tuples(st.sampled_from(["", "/", "{run}/", "{other}/"]), st.text(max_size=80)).map("".join),
)


@fuzz_settings(400)
@given(raw=paths)
def test_a_path_is_inside_its_run_after_symlinks_or_refused_naming_the_field(runs_dir, raw):
    count("hostile paths confined")
    run_dir, other = runs_dir / "run-2", runs_dir / "run-1"
    _layout(run_dir, other)
    raw = raw.replace("{run}", str(run_dir)).replace("{other}", str(other))
    try:
        resolved = confine(raw, run_dir=run_dir, field="path")
    except PathRefused as exc:
        assert exc.field == "path" and exc.message.startswith("path ")
        return
    root = Path(os.path.realpath(run_dir))
    assert resolved == root or root in resolved.parents
    assert Path(os.path.realpath(resolved)) == resolved


@pytest.mark.parametrize("path", HOSTILE)
def test_every_hostile_path_is_refused(runs_dir, path):
    run_dir, other = runs_dir / "run-2", runs_dir / "run-1"
    _layout(run_dir, other)
    with pytest.raises(PathRefused):
        confine(path, run_dir=run_dir, field="path")


def _event(path: str) -> dict:
    return {"kind": "event", "type": "checkpoint_saved", "step": 4, "tag": "step_000004", "path": path, "bytes": 1}


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("path", ["../run-OTHER/checkpoints/step_1", "/etc", "link_out", "a" * 501, "ck\0x"])
def test_a_token_cannot_record_a_checkpoint_outside_its_run_over_the_api(seeded, operator, runs_dir, path):
    token_cache_clear()
    other, run = tiny_run(owner=operator, name="other"), tiny_run(owner=operator)
    _layout(run_dir_path(run), run_dir_path(other))
    token = run_token_issue(run=run, kind="operator").secret
    answer = Client().post(
        f"/api/v1/ingest/{run.pk}/",
        {"records": [_event(path.replace("OTHER", str(other.pk)))]},
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 400, answer.content
    body = answer.content.decode()
    assert "records[0].path" in body or "records.0.path" in body  # a NUL is refused earlier, for every field
    assert not Checkpoint.objects.filter(run=run).exists()


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_inside_the_run_is_recorded_resolved(seeded, operator, runs_dir):
    token_cache_clear()
    run = tiny_run(owner=operator)
    _layout(run_dir_path(run), runs_dir / "elsewhere")
    token = run_token_issue(run=run, kind="operator").secret
    answer = Client().post(
        f"/api/v1/ingest/{run.pk}/",
        {"records": [_event("checkpoints/./step_1")]},
        content_type="application/json",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert answer.status_code == 200, answer.content
    assert Checkpoint.objects.get(run=run).path == os.path.realpath(run_dir_path(run) / "checkpoints" / "step_1")


def test_retention_never_deletes_outside_the_checkpoints_run(seeded, operator, runs_dir):
    """A row from before paths were checked, naming another run's directory: retention prunes the row only."""
    victim, run = tiny_run(owner=operator, name="victim"), tiny_run(owner=operator)
    _layout(run_dir_path(run), run_dir_path(victim))
    (run_dir_path(victim) / "precious").write_text("keep")
    for step, path in ((1, run_dir_path(victim)), (2, run_dir_path(run)), (3, run_dir_path(run) / "link_out")):
        Checkpoint.objects.create(run=run, step=step, tag=f"s{step}", path=str(path), metrics={})
    Checkpoint.objects.create(run=run, step=4, tag="s4", path=str(run_dir_path(run) / "checkpoints/step_1"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("django.db.transaction.on_commit", lambda fn, **kw: fn())
        pruned = checkpoint_retention_apply(run=run, actor=operator, keep_last=1)
    assert {c.step for c in pruned} == {1, 2, 3}
    assert (run_dir_path(victim) / "precious").read_text() == "keep"
    assert run_dir_path(run).is_dir() and (run_dir_path(run) / "checkpoints" / "step_1").is_dir()


def test_quantize_refuses_a_checkpoint_outside_its_run(seeded, operator, runs_dir):
    other, run = tiny_run(owner=operator, name="other"), tiny_run(owner=operator)
    _layout(run_dir_path(run), run_dir_path(other))
    from runs.models import Run, RunStatus

    Run.objects.filter(pk=run.pk).update(run_dir=str(run_dir_path(run)), status=RunStatus.SUCCEEDED)
    outside = Checkpoint.objects.create(
        run=Run.objects.get(pk=run.pk), step=1, tag="s1", path=str(run_dir_path(other) / "checkpoints/step_1")
    )
    with pytest.raises(ServingRefused) as refused:
        artifact_create(checkpoint=outside, methods=[], actor=operator)
    assert refused.value.field == "checkpoint" and "not inside run" in str(refused.value)
