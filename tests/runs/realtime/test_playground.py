"""The playground websocket: its parameters checked with the field named, and its guards (login, role, a running
endpoint)."""

from __future__ import annotations

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from runs.realtime.playground import playground_params
from runs.realtime.routing import websocket_urlpatterns
from tests.runs.factories import deployment_for


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"prompt": "  "}, "prompt: type something"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens: 0 is outside 1 to 4096"),
        ({"prompt": "hi", "max_tokens": 2.5}, "max_tokens: must be a whole number"),
        ({"prompt": "hi", "temperature": -1}, "temperature: -1 is outside"),
        ({"prompt": "hi", "top_p": "high"}, "top_p: must be a number"),
        ("just text", "send a JSON object"),
    ],
)
def test_playground_parameters_are_checked_with_the_field_named(content, words):
    with pytest.raises(ValueError, match=words):
        playground_params(content)


class _WithUser:
    def __init__(self, inner, user):
        self.inner, self.user = inner, user

    async def __call__(self, scope, receive, send):
        return await self.inner({**scope, "user": self.user}, receive, send)


async def _connect(user, deployment_id):
    comm = WebsocketCommunicator(
        _WithUser(URLRouter(websocket_urlpatterns), user), f"/ws/deployments/{deployment_id}/playground/"
    )
    connected, code = await comm.connect(timeout=3)
    return comm, connected, code


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_playground_refuses_anonymous_and_viewers_and_waits_for_a_running_endpoint(
    checkpointed, operator, viewer
):
    from channels.db import database_sync_to_async

    deployment = await database_sync_to_async(deployment_for)(checkpointed, actor=operator)
    for user, expected in ((AnonymousUser(), 4401), (viewer, 4403)):
        comm, connected, code = await _connect(user, deployment.pk)
        await comm.disconnect()
        assert not connected and code == expected
    comm, connected, code = await _connect(operator, 999_999)
    await comm.disconnect()
    assert not connected and code == 4404
    comm, connected, _ = await _connect(operator, deployment.pk)
    assert connected
    await comm.send_json_to({"prompt": "hello", "max_tokens": 4})
    reply = await comm.receive_json_from(timeout=3)
    await comm.disconnect()
    assert reply == {"type": "error", "message": "The endpoint is starting; prompts need a running one."}
