"""Forms and plans never fail: every field combination the run form accepts is checked before any message is
formatted, a plan that does not fit is refused unless someone says why, and that reason is audited."""

import pytest
from django.urls import reverse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runs.forms import RunForm
from runs.models import AuditEvent, Run, RunStatus
from runs.services.runs import RunActionRefused, RunInvalid, run_launch
from tests.runs.factories import tiny_run
from tests.runs.test_run_views import _form_data

pytestmark = pytest.mark.django_db

# A tiny-preset model too large for the local CPU cluster's 8 GiB per rank.
TOO_BIG = {"model__num_layers": 48, "model__hidden_size": 4096, "model__intermediate_size": 16384}


def test_the_guides_curriculum_on_the_tiny_preset_names_the_field_instead_of_a_500(client, seeded, operator):
    client.force_login(operator)
    data = _form_data(curriculum="0:256, 3000:2048")
    answer = client.post(reverse("run-plan"), data)
    assert answer.status_code == 200
    errors = answer.json()["errors"]["curriculum"]
    assert any("longer than batch.seq_len 64" in e for e in errors)
    page = client.post(reverse("run-new"), data)
    assert page.status_code == 200
    assert "longer than batch.seq_len 64" in page.content.decode()
    assert not Run.objects.exists()


stage = st.tuples(st.integers(0, 5000), st.sampled_from([1, 3, 8, 16, 24, 32, 48, 64, 100, 128, 256, 2048, 8192]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stages=st.lists(stage, min_size=1, max_size=4),
    seq_len=st.sampled_from([8, 16, 48, 64, 100, 128, 256, 1024]),
    micro=st.integers(1, 64),
    accum=st.integers(1, 64),
    tp=st.integers(1, 8),
    budget=st.integers(1, 10**7),
)
def test_any_curriculum_and_batch_the_form_accepts_is_answered_with_field_errors(
    seeded, stages, seq_len, micro, accum, tp, budget
):
    data = _form_data(
        curriculum=", ".join(f"{start}:{length}" for start, length in stages),
        batch__seq_len=seq_len,
        batch__micro_batch=micro,
        batch__grad_accum=accum,
        parallel__tp=tp,
        training__token_budget=budget,
    )
    form = RunForm(data)
    if not form.is_valid():
        for name, messages in form.errors.items():
            assert name in form.fields or name == "__all__"
            assert all(isinstance(m, str) and m for m in messages)


def test_a_plan_that_does_not_fit_is_refused_at_create_with_the_way_out(client, seeded, operator):
    client.force_login(operator)
    answer = client.post(reverse("run-new"), _form_data(**TOO_BIG))
    assert answer.status_code == 200
    assert "give the reason to launch it anyway" in answer.content.decode()
    assert not Run.objects.exists()
    plan = client.post(reverse("run-plan"), _form_data(**TOO_BIG)).json()
    assert plan["valid"] is False and plan["plan"]["memory_gib"]["fits"] is False
    assert "fit_override_reason" in plan["errors"]


def test_an_operator_overrides_the_fit_check_with_a_reason_that_is_audited(client, seeded, operator):
    client.force_login(operator)
    reason = "the activation estimate double-counts MLA latents"
    answer = client.post(reverse("run-new"), _form_data(**TOO_BIG, fit_override_reason=reason))
    run = Run.objects.get()
    assert answer.status_code == 302
    assert run.plan["fit_override"]["reason"] == reason
    event = AuditEvent.objects.get(action="run.fit_override")
    assert event.message == reason and event.actor == "otto"
    run_launch(actor=operator, run=run)  # the override stays with the run
    assert Run.objects.get().status == RunStatus.QUEUED


def test_launch_refuses_a_stored_plan_that_does_not_fit_unless_given_a_reason(client, seeded, operator):
    run = tiny_run(owner=operator)
    plan = dict(run.plan, memory_gib={**run.plan["memory_gib"], "fits": False, "total": 40.0})
    Run.objects.filter(pk=run.pk).update(plan=plan)
    run.refresh_from_db()
    with pytest.raises(RunActionRefused, match="does not fit|would run out of memory"):
        run_launch(actor=operator, run=run)
    client.force_login(operator)
    client.post(reverse("run-launch", args=[run.pk]), {"fit_override_reason": "measured 6 GiB on the same layout"})
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    assert AuditEvent.objects.filter(action="run.fit_override", message="measured 6 GiB on the same layout").exists()


def test_the_service_refuses_a_plan_that_does_not_fit(seeded, operator):
    with pytest.raises(RunInvalid, match="would run out of memory"):
        tiny_run(owner=operator, **TOO_BIG)


def test_a_refused_fork_keeps_its_reason_in_a_list_the_live_plan_never_clears(
    client, seeded, operator, settings, tmp_path
):
    from runs.models import Checkpoint

    client.force_login(operator)
    from runs.services.rundir import run_dir_path

    settings.RUNS_DIR = tmp_path / "runs"
    run = tiny_run(owner=operator)
    # Checkpoint files must lie inside their run's directory to be resumable at all.
    folder = run_dir_path(run) / "checkpoints" / "step_000004"
    folder.mkdir(parents=True)
    checkpoint = Checkpoint.objects.create(run=run, step=4, tag="step_000004", path=str(folder))
    data = _form_data(parent=str(run.pk), checkpoint=str(checkpoint.pk), model__num_layers=3)
    page = client.post(reverse("run-new"), data).content.decode()
    assert 'id="server-errors"' in page
    assert "keeps the model&#x27;s shape" in page
    # plan.js writes its own general errors into #form-errors only.
    assert 'id="form-errors" hidden' in page
    assert Run.objects.count() == 1
