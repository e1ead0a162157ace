"""The run form: presets, live plan endpoint, field errors that name the fix, create, edit, compare."""

import pytest
from django.urls import reverse

from runs.forms import RunForm
from runs.models import AuditEvent, Cluster, DataMixRecipe, Run, RunStatus
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


def _form_data(preset: str = "tiny", **changes) -> dict:
    form = RunForm(preset=preset)
    data = {}
    for name, field in form.fields.items():
        value = form.initial.get(name, field.initial)
        if value is None:
            continue
        if isinstance(value, bool):
            if value:
                data[name] = "on"
            continue
        data[name] = value
    data["name"] = f"{preset}-run"
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_new_run_page_shows_every_group(client, seeded, operator):
    client.force_login(operator)
    page = client.get(reverse("run-new") + "?preset=r1_guide").content.decode()
    for legend in ("Model", "Parallel layout", "Batch", "Optimizer and schedule", "Alerts and remediation"):
        assert f"<legend>{legend}</legend>" in page
    assert 'value="8"' in page  # the guide's TP 8


def test_plan_endpoint_answers_with_the_plan(client, seeded, operator):
    client.force_login(operator)
    out = client.post(reverse("run-plan"), _form_data()).json()
    assert out["valid"] is True and out["errors"] == {}
    assert out["plan"]["data_parallel"] == 2
    assert out["plan"]["memory_gib"]["fits"] is True


def test_plan_reacts_to_the_micro_batch(client, seeded, operator):
    client.force_login(operator)
    base = client.post(reverse("run-plan"), _form_data()).json()["plan"]
    data = _form_data(**{"batch__micro_batch": 16, "batch__grad_accum": 1})
    changed = client.post(reverse("run-plan"), data).json()["plan"]
    assert changed["memory_gib"]["activations"] > base["memory_gib"]["activations"]


def test_layout_that_does_not_divide_the_gpus_names_the_field(client, seeded, operator):
    client.force_login(operator)
    out = client.post(reverse("run-plan"), _form_data(**{"parallel__pp": 3})).json()
    assert out["valid"] is False
    messages = " ".join(m for msgs in out["errors"].values() for m in msgs)
    assert "parallel__pp" in out["errors"] or "parallel__tp" in out["errors"], out["errors"]
    assert "divide" in messages


def test_batch_off_target_proposes_the_nearest_valid_pair(client, seeded, operator):
    client.force_login(operator)
    out = client.post(reverse("run-plan"), _form_data(**{"batch__micro_batch": 3})).json()
    assert out["valid"] is False
    assert any("batch__" in name for name in out["errors"]), out["errors"]
    assert out["suggestions"], "the batch rule proposes a micro-batch/accumulation pair"


def test_bad_curriculum_text_names_the_format(client, seeded, operator):
    client.force_login(operator)
    out = client.post(reverse("run-plan"), _form_data(curriculum="0-32, 100-64")).json()
    assert "start_step:seq_len" in out["errors"]["curriculum"][0]


def test_non_monotone_curriculum_is_refused(client, seeded, operator):
    client.force_login(operator)
    out = client.post(reverse("run-plan"), _form_data(curriculum="0:64, 100:32")).json()
    assert out["valid"] is False and "curriculum" in out["errors"]


def test_out_of_range_number_is_refused_without_a_500(client, seeded, operator):
    client.force_login(operator)
    response = client.post(reverse("run-new"), _form_data(**{"optimizer__lr": "-1", "model__num_layers": "abc"}))
    assert response.status_code == 200
    assert Run.objects.count() == 0
    body = response.content.decode()
    assert "Ensure this value is greater than or equal to 0" in body and "Enter a whole number" in body


def test_a_valid_submit_creates_a_draft_with_frozen_config_and_plan(client, seeded, operator):
    client.force_login(operator)
    response = client.post(reverse("run-new"), _form_data())
    run = Run.objects.get()
    assert response.status_code == 302 and response["Location"] == reverse("run-detail", args=[run.pk])
    assert run.status == RunStatus.DRAFT and run.owner == operator
    assert run.config["run"]["id"] == run.pk
    assert run.config["cluster"]["name"] == "local-cpu"
    assert run.config["data"]["recipe"]["sources"][0] == {"name": "zh", "weight": 45.0, "shards_dir": None}
    assert run.plan["tokens_per_step"] > 0
    assert AuditEvent.objects.filter(action="run.create", run_id=run.pk).exists()


def test_r1_guide_preset_plans_on_its_cluster_but_cannot_launch(client, seeded, operator):
    client.force_login(operator)
    data = _form_data("r1_guide", cluster=Cluster.objects.get(name="r1-h100-128x8").pk)
    out = client.post(reverse("run-plan"), data).json()
    assert out["valid"] is True, out["errors"]
    plan = out["plan"]
    assert plan["world_size"] == 1024 and plan["data_parallel"] == 32
    assert plan["reconciliation_notes"], "the plan says which of the guide's figures gave way"
    client.post(reverse("run-new"), data)
    run = Run.objects.get()
    page = client.get(reverse("run-detail", args=[run.pk])).content.decode()
    assert "plan only" in page
    client.post(reverse("run-launch", args=[run.pk]))
    run.refresh_from_db()
    assert run.status == RunStatus.DRAFT


def test_editing_a_draft_records_the_config_diff(client, seeded, operator):
    run = tiny_run(owner=operator)
    client.force_login(operator)
    data = _form_data(**{"optimizer__lr": "0.002"})
    data["name"] = run.name
    response = client.post(reverse("run-edit", args=[run.pk]), data)
    assert response.status_code == 302
    run.refresh_from_db()
    assert run.config["optimizer"]["lr"] == 0.002
    event = AuditEvent.objects.get(action="run.edit", run_id=run.pk)
    assert event.diff["optimizer.lr"] == [0.001, 0.002]


def test_compare_shows_only_what_differs(client, seeded, operator):
    a = tiny_run(owner=operator, name="a")
    b = tiny_run(owner=operator, name="b", optimizer__lr=0.003)
    client.force_login(operator)
    page = client.get(reverse("run-compare") + f"?run={a.pk}&run={b.pk}").content.decode()
    assert "optimizer.lr" in page and "0.003" in page
    assert "model.hidden_size" not in page


def test_run_list_filters_by_status_and_owner(client, seeded, operator, viewer):
    a = tiny_run(owner=operator, name="first-run")
    tiny_run(owner=operator, name="second-run")
    from runs.services.runs import run_launch

    run_launch(actor=operator, run=a)
    client.force_login(viewer)
    page = client.get(reverse("run-list") + "?status=queued").content.decode()
    assert "first-run" in page and "second-run" not in page
    page = client.get(reverse("run-list") + "?owner=nobody").content.decode()
    assert "first-run" not in page


def _recipe_data(recipe: DataMixRecipe | None = None, **fields) -> dict:
    """What the recipe page posts: its preparation settings as shown (a new recipe's defaults, or the version's)."""
    from jobs.data.prep import settings as prep_settings
    from runs.forms import RecipeForm
    from runs.services.recipes import recipe_settings

    settings = recipe_settings(recipe) if recipe else prep_settings.validate({})
    form = RecipeForm(settings=settings)
    data = {}
    for name in form.fields:
        if not name.startswith("p_"):
            continue
        value = form.initial.get(name)
        if value is True:
            data[name] = "on"
        elif value is not None and value is not False:
            data[name] = value
    return {**data, **fields}


def test_recipe_form_creates_and_versions(client, seeded, operator):
    client.force_login(operator)
    response = client.post(reverse("recipe-new"), _recipe_data(name="code-heavy", w_zh="20", w_en="70", w_other="10"))
    recipe = DataMixRecipe.objects.get(name="code-heavy")
    assert response.status_code == 302
    bad = client.post(
        reverse("recipe-edit", args=[recipe.pk]), _recipe_data(recipe, w_zh="20", w_en="70", w_other="20")
    )
    assert "sum to 110.00 %" in bad.content.decode()
    client.post(reverse("recipe-edit", args=[recipe.pk]), _recipe_data(recipe, w_zh="30", w_en="60", w_other="10"))
    v2 = DataMixRecipe.objects.get(name="code-heavy", version=2)
    page = client.get(reverse("recipe-detail", args=[v2.pk])).content.decode()
    assert "Changes from v1 to v2" in page


def test_a_malformed_fork_or_parent_id_is_ignored_not_a_500(client, seeded, operator):
    client.force_login(operator)
    assert client.get(reverse("run-new") + "?fork=abc").status_code == 200
    response = client.post(reverse("run-new"), {**_form_data(), "parent": "1 OR 1=1"})
    assert response.status_code == 302
    assert Run.objects.get().parent is None


def test_run_page_lists_each_alert_once_and_marks_a_resolved_one(client, seeded, operator):
    from runs.services.alerts import alert_json, alert_raise, alert_resolve

    run = tiny_run(owner=operator)
    alert = alert_raise(
        run=run, kind="throughput", severity="warning", step=7, message="Throughput fell.", evidence={"value": 1.0}
    )
    alert_resolve(run=run, kind="throughput")
    alert.refresh_from_db()
    client.force_login(operator)
    page = client.get(reverse("run-detail", args=[run.pk])).content.decode()
    assert page.count(f'data-alert-id="{alert.pk}"') == 1 and "(resolved)</div>" in page
    # The live page's line for the same alert (static/js/charts.js) uses this label and resolved_at.
    pushed = alert_json(alert)
    assert pushed["kind_label"] == alert.get_kind_display() and pushed["resolved_at"]
