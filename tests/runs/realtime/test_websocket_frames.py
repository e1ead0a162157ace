"""Random frames to every websocket consumer over a real websocket on the real server: each is answered or
ignored, the socket stays usable, and the server logs no error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.controlplane.test_walk import Session, server_errors
from tests.fuzz import count, fuzz_settings
from tests.stack import start_stack, stop_stack

pytestmark = pytest.mark.django_db(transaction=True)

JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
PROMPTS = st.fixed_dictionaries(
    {"prompt": st.text(max_size=30)},
    optional={
        k: st.one_of(st.integers(-5, 10**6), st.floats(), st.text(max_size=3))
        for k in ("max_tokens", "temperature", "top_p")
    },
)
FRAMES = st.one_of(
    JSONISH.map(json.dumps),
    PROMPTS.map(json.dumps),
    st.text(max_size=50),
    st.binary(max_size=50),
    st.sampled_from(["", "{", "null", "[]", '{"type": "run.points"}', "\x00"]),
)


@pytest.fixture
def stack(tmp_path, seeded, operator):
    stack = start_stack(tmp=tmp_path, worker=False)
    yield stack
    stop_stack(stack)
    print(stack.log_tail(120))  # shown by pytest only when the test failed


@pytest.fixture
def sockets(stack, operator):
    from runs.models import Checkpoint, DataSource, Run, RunStatus
    from tests.runs.factories import deployment_for, tiny_run

    run = tiny_run(owner=operator)
    Run.objects.filter(pk=run.pk).update(status=RunStatus.SUCCEEDED)
    Checkpoint.objects.create(run=run, step=4, tag="step_000004", path=str(stack.runs_dir), metrics={})
    deployment = deployment_for(Run.objects.get(pk=run.pk), actor=operator)
    session = Session(stack.url, "otto")
    base = stack.url.replace("http://", "ws://")
    paths = [
        "/ws/runs/",
        f"/ws/runs/{run.pk}/",
        f"/ws/deployments/{deployment.pk}/playground/",
        f"/ws/data/sources/{DataSource.objects.first().pk}/",
    ]
    headers = {"Origin": stack.url, "Cookie": session.cookie_header}
    return [base + p for p in paths], headers


@fuzz_settings(150)
@given(data=st.data())
def test_random_frames_never_break_a_consumer(stack, sockets, data):
    count("websocket frames: random frames to every consumer")
    urls, headers = sockets
    url = data.draw(st.sampled_from(urls))
    frames = data.draw(st.lists(FRAMES, min_size=1, max_size=4))
    with connect(url, additional_headers=headers, open_timeout=10, close_timeout=2) as ws:
        for frame in frames:
            ws.send(frame)
        ws.send(json.dumps({"prompt": ""}))  # answered by the playground; ignored by the others
        try:
            while True:
                message = json.loads(ws.recv(timeout=0.2))
                assert isinstance(message, dict) and message.get("type")
        except TimeoutError:
            pass
        except ConnectionClosed as exc:
            assert exc.rcvd is None or exc.rcvd.code != 1011, (url, frames)
    errors = server_errors("\n".join(p.read_text(errors="replace") for p in stack.logs.glob("*.log")))
    assert not errors, (url, frames, errors[:3])
