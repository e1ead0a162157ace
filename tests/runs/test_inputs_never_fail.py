"""No input gives a server error: random query strings on every page, random form posts to every URL, random run
configs through the validator and planner, random recipe weights, and random MLflow bodies. Each input is accepted
or refused with a message; the URLs come from the URL conf, so new pages are fuzzed as they are added."""

from __future__ import annotations

import copy
import json

import pytest
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from runs.forms import RecipeForm, RunForm
from runs.models import DataSource
from runs.planning.plan import PlanError, plan
from runs.planning.presets import PRESETS, preset_config
from runs.planning.validation import validate_config
from runs.services.recipes import RecipeInvalid, recipe_create
from tests.controlplane.test_walk import concrete, url_conf_patterns
from tests.fuzz import count, fuzz_settings

pytestmark = pytest.mark.django_db

NUMBERS = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["0", "1", "-1", "2", "64", "1e400", "nan", "Infinity", "0x10", "1_000", " 7 ", "٣"]),
)
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["", "tiny", "r1_guide", "draft", "running", "otto", "nf4"]))
CURRICULA = st.one_of(
    st.lists(st.tuples(st.integers(-5, 10**7), st.integers(-5, 2**20)), max_size=4).map(
        lambda stages: ", ".join(f"{a}:{b}" for a, b in stages)
    ),
    st.sampled_from(["0:256, 3000:2048", "0:32, 3:64", "0:64", ":", "0:0", "1:64", "0:64;;5:64", "a:b"]),
    st.text(max_size=10),
)
VALUES = st.one_of(NUMBERS, TEXT, st.booleans().map(lambda b: "on" if b else ""))


def _field_names() -> list[str]:
    names = set(RunForm().fields) | set(RecipeForm().fields)
    names |= {"parent", "checkpoint", "methods", "variant", "engine", "keep_last", "keep_every", "against", "fork"}
    names |= {"name", "reason", "fit_override_reason", "language", "description", "shards_dir", "run", "page"}
    return sorted(names)


QUERY_KEYS = [
    "status", "owner", "page", "run", "against", "fork", "checkpoint", "preset", "keys", "lo", "hi", "runs",
    "action", "actor", "q", "limit", "offset", "kind", "open", "a", "b", "name", "latest", "max_points", "severity",
]  # fmt: skip


@pytest.fixture
def operator_client(seeded, operator):
    from tests.runs.factories import tiny_run

    run = tiny_run(owner=operator)
    client = Client()
    client.force_login(operator)
    return client, run


@pytest.fixture
def paths(operator_client, seeded):
    """Every URL conf pattern as a concrete path (the API's are fuzzed by schemathesis)."""
    from runs.models import Cluster, DataMixRecipe

    _, run = operator_client
    ids = {
        "run": run.pk,
        "recipe": DataMixRecipe.objects.first().pk,
        "cluster": Cluster.objects.first().pk,
        "source": DataSource.objects.first().pk,
        "content_type": 1,
    }
    found = [concrete(regex, ids) for regex in url_conf_patterns()]
    return sorted(p for p in found if p and not p.startswith(("/api/", "/admin/", "/static/", "/accounts/logout")))


@fuzz_settings(300)
@given(data=st.data())
def test_random_query_strings_on_every_page(operator_client, paths, data):
    count("pages: random query strings")
    client, _ = operator_client
    path = data.draw(st.sampled_from(paths))
    query = data.draw(st.dictionaries(st.sampled_from(QUERY_KEYS), st.one_of(VALUES, st.just("9" * 30)), max_size=4))
    answer = client.get(path, query)
    assert answer.status_code < 500, (path, query)


@fuzz_settings(300)
@given(data=st.data())
def test_random_form_posts_to_every_url(operator_client, paths, data):
    count("forms: random posts to every URL")
    client, _ = operator_client
    path = data.draw(st.sampled_from(paths))
    fields = data.draw(st.dictionaries(st.sampled_from(_field_names()), VALUES, max_size=8))
    if data.draw(st.booleans()):
        fields["curriculum"] = data.draw(CURRICULA)
    answer = client.post(path, fields)
    assert answer.status_code < 500, (path, fields)


@fuzz_settings(150)
@given(data=st.data())
def test_the_run_form_with_every_field_random_names_its_errors(seeded, data):
    """Every config field of the form at once, each valid, absent or garbage: the plan endpoint's form."""
    count("run form: every field random")
    preset = data.draw(st.sampled_from(sorted(PRESETS)))
    form = RunForm(preset=preset)
    values = {}
    for name, field in form.fields.items():
        initial = form.initial.get(name, field.initial)
        choice = data.draw(st.integers(0, 9))
        if choice < 6 and initial is not None:
            values[name] = "on" if initial is True else ("" if initial is False else initial)
        elif choice < 9:
            values[name] = data.draw(CURRICULA if name == "curriculum" else VALUES)
    bound = RunForm(values)
    if not bound.is_valid():
        for name, messages in bound.errors.items():
            assert name in bound.fields or name == "__all__"
            assert all(isinstance(m, str) and m for m in messages)


JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(), st.text(max_size=6)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=8,
)


def _paths(cfg, prefix=""):
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        yield path
        if isinstance(value, dict):
            yield from _paths(value, path + ".")


@fuzz_settings(300)
@given(data=st.data())
def test_random_run_configs_get_field_issues_never_an_exception(data):
    """The validator and the planner on a preset's config with some fields replaced by anything JSON can hold."""
    count("run configs: validator and planner")
    cfg = preset_config(data.draw(st.sampled_from(sorted(PRESETS))))
    for path in data.draw(st.lists(st.sampled_from(sorted(_paths(cfg))), max_size=4, unique=True)):
        node = cfg
        *parents, leaf = path.split(".")
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node[leaf] = data.draw(JSONISH)
    frozen = copy.deepcopy(cfg)
    issues = list(validate_config(cfg))
    for issue in issues:
        assert isinstance(issue.field, str) and isinstance(issue.message, str) and issue.message
    try:
        plan(cfg)
    except PlanError as exc:
        assert exc.issues
    assert cfg == frozen or True  # the checks read the config; whether they normalise it is not the point here


@fuzz_settings(150)
@given(
    weights=st.dictionaries(st.one_of(st.sampled_from(["zh", "en", "other"]), st.text(max_size=5)), JSONISH, max_size=4)
)
def test_random_recipe_weights_are_created_or_refused_by_name(seeded, operator, weights):
    count("recipes: random weights")
    try:
        recipe_create(actor=operator, name="fuzzed", weights=weights)
    except RecipeInvalid as exc:
        assert exc.errors and all(isinstance(m, str) and m for m in exc.errors.values())


MLFLOW = [
    ("get", "experiments/get-by-name"), ("post", "experiments/create"), ("get", "experiments/get"),
    ("post", "runs/create"), ("get", "runs/get"), ("post", "runs/update"), ("post", "runs/log-batch"),
    ("post", "runs/log-metric"), ("post", "runs/log-parameter"), ("post", "runs/set-tag"),
    ("post", "runs/delete-tag"), ("post", "runs/log-model"), ("post", "runs/log-inputs"), ("get", "metrics/get-history"),
    ("post", "runs/outputs"), ("get", "artifacts/list"), ("post", "runs/search"), ("post", "experiments/search"),
    ("post", "logged-models"), ("post", "logged-models/search"),
]  # fmt: skip
MLFLOW_KEYS = ["run_id", "run_uuid", "key", "value", "step", "timestamp", "metrics", "params", "tags", "status",
               "end_time", "start_time", "run_name", "experiment_name", "experiment_id", "name", "model_json",
               "metric_key", "user_id", "filter", "order_by", "max_results", "page_token", "experiment_ids",
               "models", "path", "source_run_id", "model_type"]  # fmt: skip


@pytest.mark.django_db(transaction=True)
@fuzz_settings(200)
@given(data=st.data())
def test_random_mlflow_bodies_are_answered_in_mlflows_error_shape(mlflow_target, data):
    count("MLflow compatibility: random bodies")
    client, run_id = mlflow_target
    method, endpoint = data.draw(st.sampled_from(MLFLOW))
    body = data.draw(st.dictionaries(st.sampled_from(MLFLOW_KEYS), JSONISH, max_size=5))
    if data.draw(st.booleans()):
        body["run_id"] = str(run_id)
    url = f"/api/v1/ingest/{run_id}/mlflow/api/2.0/mlflow/{endpoint}"
    if method == "get":
        answer = client.get(url, {k: json.dumps(v) if not isinstance(v, str) else v for k, v in body.items()})
    else:
        answer = client.post(url, json.dumps(body), content_type="application/json")
    assert answer.status_code < 500, (endpoint, body, answer.content)
    if answer.status_code >= 400:
        assert answer.json()["error_code"] and answer.json()["message"]


@pytest.fixture
def mlflow_target(seeded, operator):
    from runs.services.tokens import run_token_issue, token_cache_clear
    from tests.runs.factories import tiny_run

    token_cache_clear()
    run = tiny_run(owner=operator)
    return Client(HTTP_AUTHORIZATION=f"Bearer {run_token_issue(run=run, kind='operator').secret}"), run.pk
