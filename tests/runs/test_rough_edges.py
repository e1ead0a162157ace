"""The rough edges people tripped over: checkpoint metrics, the deployment key, recipes, latency history, config
as JSON, confirmations and the favicon."""

from __future__ import annotations

import json
import stat

import pytest
from django.urls import reverse

from runs.metrics.store import metrics_record
from runs.models import AuditEvent, DataMixRecipe, DataSource, JobPhase
from runs.services.artifacts import latency_finish
from runs.services.serving_transitions import move
from tests.runs.factories import deployment_for, tiny_run

pytestmark = pytest.mark.django_db


def _points(run, steps, **values):
    metrics_record(
        run=run,
        records=[
            {"kind": "metrics", "step": s, "time": 0.0, "values": {k: v(s) for k, v in values.items()}} for s in steps
        ],
    )


def test_checkpoints_show_the_runs_metrics_at_their_step_when_the_job_recorded_none(client, checkpointed, viewer):
    checkpointed.checkpoints.update(metrics={})
    _points(checkpointed, range(0, 4), loss=lambda s: 5.0 - s, lr=lambda s: 1e-3)  # step 4 itself was not logged
    client.force_login(viewer)
    body = client.get(f"/runs/{checkpointed.pk}/checkpoints/").content.decode()
    assert "loss=2" in body and "lr=0.001" in body


def test_the_deployment_key_is_shown_once_then_only_a_rotated_one(client, checkpointed, operator, viewer, tmp_path):
    from runs.models import Deployment

    deployment = deployment_for(checkpointed, actor=operator)
    state = tmp_path / "d1"
    state.mkdir()
    Deployment.objects.filter(pk=deployment.pk).update(state_dir=str(state))
    (state / "api_key").write_text("first-key")
    client.force_login(viewer)
    assert client.post(reverse("deployment-key", args=[deployment.pk]), {"action": "show"}).status_code == 403
    assert "first-key" not in client.get(reverse("deployment-detail", args=[deployment.pk])).content.decode()
    client.force_login(operator)
    shown = client.post(reverse("deployment-key", args=[deployment.pk]), {"action": "show"})
    assert "first-key" in shown.content.decode() and shown["Cache-Control"] == "no-store"
    again = client.post(reverse("deployment-key", args=[deployment.pk]), {"action": "show"}, follow=True)
    assert "first-key" not in again.content.decode() and "rotate it" in again.content.decode()
    rotated = client.post(reverse("deployment-key", args=[deployment.pk]), {"action": "rotate"}).content.decode()
    new_key = (state / "api_key").read_text()
    assert new_key != "first-key" and new_key in rotated
    assert stat.S_IMODE((state / "api_key").stat().st_mode) == 0o600
    actions = list(AuditEvent.objects.filter(object_id=str(deployment.pk)).values_list("action", flat=True))
    assert "deployment.key_shown" in actions and "deployment.key_rotated" in actions


def test_the_native_server_takes_a_rotated_key_at_the_next_request(tmp_path):
    from jobs.serve.server import KeyFile

    path = tmp_path / "api_key"
    path.write_text("old")
    key = KeyFile(str(path), "old")
    assert key() == "old"
    path.write_text("new")
    import os

    os.utime(path, ns=(1, 10**18))
    assert key() == "new"


def test_a_stop_and_a_cancel_ask_for_confirmation(client, checkpointed, operator, seeded):
    deployment = deployment_for(checkpointed, actor=operator)
    client.force_login(operator)
    page = client.get(reverse("deployment-detail", args=[deployment.pk])).content.decode()
    assert 'data-confirm="Stop deployment' in page
    run = tiny_run(owner=operator, name="to-cancel")
    assert 'data-confirm="Cancel run' in client.get(reverse("run-detail", args=[run.pk])).content.decode()


def test_editing_a_recipe_keeps_its_notes_and_mixes_in_any_registered_source(client, seeded, operator):
    client.force_login(operator)
    base = DataMixRecipe.objects.get(name="bilingual-demo", version=1)
    DataMixRecipe.objects.filter(pk=base.pk).update(notes="zh 45 / en 35 / other 20, as in the guide")
    DataSource.objects.create(name="code-py", language="python")
    page = client.get(reverse("recipe-edit", args=[base.pk])).content.decode()
    assert "zh 45 / en 35 / other 20, as in the guide" in page
    assert 'name="w_code-py"' in page and "register another source" in page
    from runs.forms import RecipeForm
    from runs.services.recipes import recipe_settings

    form = RecipeForm(fixed_name=base.name, weights=base.weights(), settings=recipe_settings(base), notes=base.notes)
    data = {name: form.initial.get(name, field.initial) for name, field in form.fields.items()}
    data = {k: ("on" if v is True else v) for k, v in data.items() if v is not None and v is not False}
    data.update({f"w_{name}": w for name, w in base.weights().items()})
    first = next(k for k in data if k.startswith("w_"))
    data[first] = float(data[first]) - 5
    data.update({"w_code-py": "5", "notes": "zh 45 / en 35 / other 20, as in the guide"})
    client.post(reverse("recipe-edit", args=[base.pk]), data)
    latest = DataMixRecipe.objects.filter(name=base.name).order_by("-version").first()
    assert latest.version == 2 and latest.notes == "zh 45 / en 35 / other 20, as in the guide"
    assert latest.weights()["code-py"] == 5.0


def test_a_second_latency_measurement_keeps_the_first(checkpointed, operator):
    artifact = deployment_for(checkpointed, actor=operator).artifact
    for ms in (12.0, 9.0):
        artifact = move(obj=artifact, field="latency_status", to=JobPhase.QUEUED, actor=operator)
        artifact = move(obj=artifact, field="latency_status", to=JobPhase.RUNNING, actor="system")
        report = {"device": "cpu", "variants": [{"name": "nf4", "decode_ms_per_token": ms}]}
        artifact = latency_finish(artifact=artifact, status=JobPhase.SUCCEEDED, report=report)
    assert artifact.latency["variants"][0]["decode_ms_per_token"] == 9.0
    assert [h["variants"][0]["decode_ms_per_token"] for h in artifact.latency["history"]] == [12.0]


def test_the_config_is_json_that_pastes_back_into_the_form(client, seeded, operator):
    run = tiny_run(owner=operator, name="source-run", batch__micro_batch=4, batch__grad_accum=4)
    client.force_login(operator)
    page = client.get(reverse("run-detail", args=[run.pk])).content.decode()
    start = page.index('id="config-json">') + len('id="config-json">')
    import html

    text = html.unescape(page[start : page.index("</pre>", start)])
    assert json.loads(text) == run.config
    form_page = client.post(reverse("run-new"), {"config_json": text}).content.decode()
    assert 'value="source-run-copy"' in form_page and 'name="batch__micro_batch" value="4"' in form_page
    bad = client.post(reverse("run-new"), {"config_json": "{'model': None}"}, follow=True).content.decode()
    assert "not JSON" in bad


def test_every_page_names_its_favicon_and_the_icon_is_served(client, operator):
    client.force_login(operator)
    page = client.get(reverse("run-list")).content.decode()
    assert 'rel="icon"' in page and "favicon" in page
    login = client.get("/accounts/login/").content.decode()
    assert 'rel="icon"' in login
    client.logout()
    assert client.get("/static/favicon.svg").status_code == 200
