"""The published ingest schema and the ingest server agree: a body the schema accepts is stored, a body it refuses
is refused with the record and field named, and no body gives a server error."""

from __future__ import annotations

import json

import jsonschema_rs
import pytest
from django.test import Client
from hypothesis import given
from hypothesis import strategies as st

from runs.api import api
from runs.metrics.validation import IngestInvalid, ingest_body
from tests.fuzz import count, fuzz_settings

KEYS = st.one_of(st.sampled_from(["loss", "lr", "grad_norm", "eval/loss", "moe.load-0"]), st.text(max_size=6))
VALUES = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.integers(-(2**60), 2**60),
    st.sampled_from(["nan", "NaN", " inf", "-Infinity", "+inf", "infinity", "-nan", "1.5", "", "INF\n"]),
    st.booleans(),
    st.none(),
)
STEPS = st.one_of(st.integers(-3, 2**53 + 3), st.sampled_from([1.0, 2.5, -1.0, 2.0**53, "3", None, True]), st.just(7))
TIMES = st.one_of(st.none(), st.floats(-1e18, 1e18), st.sampled_from([0, 253_402_300_799, 253_402_300_800, "now"]))
EXTRA = st.dictionaries(st.sampled_from(["time", "rank", "note"]), st.one_of(st.integers(), st.text(max_size=3)))


def _record(kind, step, body: dict, extra: dict) -> dict:
    record = {**extra, **body}
    if kind is not None:
        record["kind"] = kind
    if step != "absent":
        record["step"] = step
    return record


metrics = st.builds(
    _record,
    st.just("metrics"),
    STEPS,
    st.fixed_dictionaries({"values": st.one_of(st.dictionaries(KEYS, VALUES, max_size=4), st.just([]))}),
    EXTRA,
)
heartbeats = st.builds(
    _record,
    st.just("heartbeat"),
    st.one_of(STEPS, st.just("absent")),
    st.fixed_dictionaries({}, optional={"time": TIMES}),
    st.just({}),
)
events = st.builds(
    _record,
    st.just("event"),
    STEPS,
    st.fixed_dictionaries(
        {
            "type": st.one_of(
                st.sampled_from(["checkpoint_saved", "oom", "nan", "started", "bad type!"]), st.text(max_size=4)
            )
        },
        optional={
            "tag": st.one_of(st.text(max_size=5), st.none(), st.integers()),
            "path": st.one_of(st.text(max_size=5), st.integers()),
            "bytes": st.one_of(st.integers(-5, 2**40), st.text(max_size=2)),
            "metrics": st.one_of(st.dictionaries(KEYS, VALUES, max_size=2), st.lists(st.integers(), max_size=2)),
        },
    ),
    st.just({}),
)
others = st.one_of(
    st.builds(
        _record, st.one_of(st.none(), st.sampled_from(["metric", "", "event "])), STEPS, st.just({}), st.just({})
    ),
    st.integers(),
    st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)
records = st.one_of(metrics, heartbeats, events, others)
columns = st.dictionaries(
    KEYS,
    st.one_of(
        st.fixed_dictionaries({"steps": st.lists(STEPS, max_size=3), "values": st.lists(VALUES, max_size=3)}),
        st.fixed_dictionaries({"steps": st.lists(st.integers(0, 100), min_size=2, max_size=2)}),
        st.integers(),
    ),
    max_size=3,
)
bodies = st.one_of(
    st.fixed_dictionaries({"records": st.lists(records, max_size=6)}, optional={"source": st.text(max_size=3)}),
    st.fixed_dictionaries({"series": columns}, optional={"records": st.lists(records, max_size=3)}),
    st.fixed_dictionaries(
        {
            "records": st.one_of(
                st.none(), st.integers(), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1)
            )
        }
    ),
    st.lists(st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def published():
    schema = api.get_openapi_schema()
    components = schema["components"]["schemas"]
    return jsonschema_rs.validator_for(
        {"$ref": "#/components/schemas/IngestBody", "components": {"schemas": components}}
    )


def _server_accepts(body: bytes) -> tuple[bool, list[dict]]:
    try:
        ingest_body(body)
    except IngestInvalid as exc:
        return False, exc.errors
    return True, []


@fuzz_settings(400)
@given(body=bodies)
def test_the_schema_and_the_server_agree_on_every_body(published, body):
    count("ingest bodies: schema and server agree")
    raw = json.dumps(body).encode()
    accepted, errors = _server_accepts(raw)
    assert published.is_valid(json.loads(raw)) == accepted, (body, errors)
    for error in errors:
        assert isinstance(error["message"], str) and error["message"]
        assert error["index"] is None or 0 <= error["index"] < len(body["records"])


@fuzz_settings(150)
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_any_bytes_are_stored_or_refused_naming_the_problem(raw):
    count("ingest bodies: random bytes")
    accepted, errors = _server_accepts(raw)
    assert accepted or errors


@pytest.mark.django_db(transaction=True)
@fuzz_settings(120)
@given(body=bodies)
def test_the_ingest_route_answers_every_body_without_a_server_error(ingest_target, body):
    count("ingest route: bodies with the run's token")
    client, run_id = ingest_target
    answer = client.post(f"/api/v1/ingest/{run_id}/", json.dumps(body), content_type="application/json")
    assert answer.status_code in (200, 400), answer.content
    if answer.status_code == 400:
        assert answer.json()["errors"]


@pytest.fixture
def ingest_target(seeded, operator):
    from runs.services.tokens import run_token_issue, token_cache_clear
    from tests.runs.factories import tiny_run

    token_cache_clear()
    run = tiny_run(owner=operator)
    token = run_token_issue(run=run, kind="operator").secret
    return Client(HTTP_AUTHORIZATION=f"Bearer {token}"), run.pk
