"""The ingest body's columns form: stored as records would be, and every body either stored whole or refused with a
4xx that names the field, never a 5xx."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.reporter import ingest_body as reporter_body
from runs.metrics.reads import series_read
from runs.metrics.validation import MAX_POINTS, MAX_STEP, IngestInvalid, ingest_body
from runs.models import Run
from runs.services.tokens import run_token_issue, token_cache_clear
from tests.fuzz import count, fuzz_settings
from tests.runs.factories import tiny_run
from tests.runs.test_ingest import _server_released, metrics, points, post  # noqa: F401 (its endpoint's release)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def run_and_token(seeded, operator):
    token_cache_clear()
    run = tiny_run(owner=operator)
    return run, run_token_issue(run=run, kind="operator").secret


def columns(**keys) -> bytes:
    return json.dumps({"series": {k: {"steps": s, "values": v} for k, (s, v) in keys.items()}}).encode()


def steps_and_values(run: Run, key: str) -> tuple[list[int], list[float]]:
    read = series_read(run_id=run.pk, keys=[key], max_points=10_000)["keys"][key]
    return read["steps"].tolist(), read["values"].tolist()


def test_columns_are_stored_as_the_same_records_would_be(seeded, operator):
    token_cache_clear()
    as_records, as_columns = (tiny_run(owner=operator, name=name) for name in ("records", "columns"))
    records = [metrics(s, loss=2.0 - s / 100, lr=1e-3) for s in range(40)] + [metrics(40, loss="nan")]
    records.append({"kind": "heartbeat", "step": 40, "time": 1.7e9})
    body = reporter_body(records)
    assert set(json.loads(body)) == {"series", "records"}
    one = post(as_records.pk, records, run_token_issue(run=as_records, kind="operator").secret).json()
    other = post(as_columns.pk, body, run_token_issue(run=as_columns, kind="operator").secret).json()
    assert len(one.pop("alerts")) == len(other.pop("alerts")) == 1  # the NaN loss: an alert in each run
    assert one == other and one["accepted"] == 81 and one["heartbeats"] == 1
    for key in ("loss", "lr"):
        (steps, values), (steps2, values2) = steps_and_values(as_records, key), steps_and_values(as_columns, key)
        assert steps == steps2 and [str(v) for v in values] == [str(v) for v in values2]
    assert math.isnan(steps_and_values(as_columns, "loss")[1][-1])


def test_columns_and_records_in_one_body_share_keys_and_the_first_value_of_a_step_wins(run_and_token):
    run, token = run_and_token
    body = json.dumps(
        {
            "records": [metrics(5, loss=1.0), {"kind": "event", "type": "started", "step": 0}],
            "series": {"loss": {"steps": [7, 5, 6, 7], "values": [7.0, 9.0, 6.0, 8.0]}},
        }
    ).encode()
    answer = post(run.pk, body, token).json()
    assert (answer["accepted"], answer["duplicates"], answer["events"], answer["last_step"]) == (3, 2, 1, 7)
    assert steps_and_values(run, "loss") == ([5, 6, 7], [1.0, 6.0, 7.0])
    again = post(run.pk, columns(loss=([5, 6, 7, 8], [0.0, 0.0, 0.0, 8.0])), token).json()
    assert (again["accepted"], again["duplicates"]) == (1, 3)


@pytest.mark.parametrize(
    ("series", "field", "words"),
    [
        ({"bad key!": {"steps": [1], "values": [1.0]}}, "series.bad key!", "key must match"),
        ({"loss": [1, 2]}, "series.loss", '"steps"'),
        ({"loss": {"steps": [], "values": []}}, "series.loss.steps", "non-empty"),
        ({"loss": {"steps": [1, 2], "values": [1.0]}}, "series.loss.values", "2 numbers"),
        ({"loss": {"steps": [1, -3], "values": [1.0, 2.0]}}, "series.loss.steps[1]", "-3 is not an integer"),
        ({"loss": {"steps": [1, True], "values": [1.0, 2.0]}}, "series.loss.steps[1]", "True is not an integer"),
        ({"loss": {"steps": [1.5], "values": [1.0]}}, "series.loss.steps[0]", "1.5"),
        ({"loss": {"steps": [2**53 + 1], "values": [1.0]}}, "series.loss.steps[0]", "2**53"),
        ({"loss": {"steps": [1, 2], "values": [1.0, "high"]}}, "series.loss.values[1]", "'high' is not a number"),
        ({"loss": {"steps": [1], "values": [None]}}, "series.loss.values[0]", "None is not a number"),
        ({"loss": {"steps": [1], "values": [False]}}, "series.loss.values[0]", "False is not a number"),
        ({"loss": {"steps": [1], "values": [10**400]}}, "series.loss.values[0]", "is not a number"),
    ],
)
def test_a_bad_column_is_refused_whole_naming_its_field(run_and_token, series, field, words):
    run, token = run_and_token
    series = {"lr": {"steps": [1], "values": [1e-3]}, **series}
    answer = post(run.pk, json.dumps({"series": series}).encode(), token)
    assert answer.status_code == 400
    error = answer.json()["errors"][0]
    assert (error["index"], error["field"]) == (None, field) and words in error["message"]
    assert f"body.{field}" in answer.json()["error"]
    assert points(run.pk, "lr") == 0 and points(run.pk, "loss") == 0


def test_the_limits_hold_for_columns(run_and_token):
    run, token = run_and_token
    too_many = columns(loss=(list(range(MAX_POINTS + 1)), [1.0] * (MAX_POINTS + 1)))
    answer = post(run.pk, too_many, token)
    assert answer.status_code == 400 and f"at most {MAX_POINTS}" in answer.json()["error"]
    answer = post(run.pk, json.dumps({"series": []}).encode(), token)
    assert answer.status_code == 400 and answer.json()["errors"][0]["field"] == "series"


# Random bodies: never a 5xx; stored whole, or refused with errors that each name a field.

KEYS = st.one_of(st.sampled_from(["loss", "lr", "grad_norm", "loss/zh"]), st.text(max_size=6))
STEPS = st.one_of(
    st.integers(0, 300),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(-(2**1100), 2**1100),
    st.sampled_from(["nan", "inf", "-Infinity", " NaN ", "high"]),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=1),
)


@st.composite
def column(draw) -> dict:
    n = draw(st.integers(0, 6))
    steps = draw(st.lists(STEPS if draw(st.booleans()) else st.integers(0, 300), min_size=n, max_size=n))
    extra = draw(st.sampled_from([0, 0, 0, 1, -1]))
    size = max(0, n + extra)
    values = draw(st.lists(VALUES if draw(st.booleans()) else st.floats(-1e6, 1e6), min_size=size, max_size=size))
    shape = draw(st.sampled_from(["column", "column", "column", "list", "no values"]))
    if shape == "list":
        return steps  # type: ignore[return-value]
    return {"steps": steps} if shape == "no values" else {"steps": steps, "values": values}


BODIES = st.fixed_dictionaries(
    {"series": st.one_of(st.dictionaries(KEYS, column(), max_size=4), st.lists(st.integers(), max_size=2))},
    optional={"records": st.lists(st.builds(lambda s: {"kind": "heartbeat", "step": s}, STEPS), max_size=2)},
)


def expected_valid(doc: dict) -> bool:
    """The rules of docs/run-config.md, written out plainly."""

    def step_ok(s) -> bool:
        if type(s) is int:
            return 0 <= s <= MAX_STEP
        return type(s) is float and math.isfinite(s) and s.is_integer() and 0 <= s <= MAX_STEP

    def value_ok(v) -> bool:
        if type(v) is float:
            return True
        if type(v) is int:
            return abs(v) <= 2**1023
        return type(v) is str and v.strip().lower() in {
            "nan",
            "inf",
            "+inf",
            "-inf",
            "infinity",
            "+infinity",
            "-infinity",
        }

    series = doc["series"]
    if type(series) is not dict:
        return False
    for record in doc.get("records", []):
        if not step_ok(record["step"]):
            return False
    for key, col in series.items():
        if not (key and len(key) <= 100 and all(c.isascii() and (c.isalnum() or c in "_./-") for c in key)):
            return False
        if type(col) is not dict or "values" not in col or not col["steps"] or len(col["values"]) != len(col["steps"]):
            return False
        if not all(step_ok(s) for s in col["steps"]) or not all(value_ok(v) for v in col["values"]):
            return False
    return True


def submitted(doc: dict) -> int:
    return sum(len(col["steps"]) for col in doc["series"].values())


@fuzz_settings(400)
@given(doc=BODIES)
def test_random_bodies_are_validated_by_the_documented_rules(doc):
    count("ingest columns: validation")
    body = json.dumps(doc).encode()
    try:
        batch = ingest_body(body)
    except IngestInvalid as exc:
        assert not expected_valid(doc), exc.errors
        # Each error names a record by its index and a field, or a column (or the body's part) by its field.
        for error in exc.errors:
            assert error["message"]
            assert error["index"] is not None or error["field"].startswith(("series", "records"))
        where = [f"records[{e['index']}]" if e["index"] is not None else f"body.{e['field']}" for e in exc.errors]
        assert all(place in str(exc) for place in where[:3])
        return
    assert expected_valid(doc)
    assert batch.points == submitted(doc)


@fuzz_settings(40)
@given(doc=BODIES)
def test_random_bodies_through_the_endpoint_are_stored_or_refused_never_a_5xx(run_and_token, doc):
    count("ingest columns: endpoint")
    run, token = run_and_token
    answer = post(run.pk, json.dumps(doc).encode(), token)
    assert answer.status_code in (200, 400), answer.content
    if answer.status_code == 400:
        assert not expected_valid(doc)
        assert all(e["field"] or e["index"] is not None for e in answer.json()["errors"])
    else:
        assert expected_valid(doc)
        result = answer.json()
        assert result["accepted"] + result["duplicates"] == submitted(doc)
