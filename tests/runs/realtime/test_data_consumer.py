"""The data pages' websocket: a prep run's progress and a source's count reach readers of data, and only them."""

import pytest
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from runs.models import Cluster, DataSource, JobPhase
from runs.realtime.routing import websocket_urlpatterns
from runs.services.data_prep import count_progress, move, prep_progress, prep_start
from runs.services.recipes import recipe_create

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


class _WithUser:
    def __init__(self, inner, user):
        self.inner, self.user = inner, user

    async def __call__(self, scope, receive, send):
        return await self.inner({**scope, "user": self.user}, receive, send)


def _communicator(user, path):
    return WebsocketCommunicator(_WithUser(URLRouter(websocket_urlpatterns), user), path)


def _prep(operator):
    recipe = recipe_create(actor=operator, name="ws", weights={"zh": 100})
    return prep_start(actor=operator, recipe=recipe, cluster=Cluster.objects.get(name="local-cpu"))


async def test_a_viewer_hears_a_prep_runs_progress(seeded, viewer, operator):
    prep = await database_sync_to_async(_prep)(operator)
    comm = _communicator(viewer, f"/ws/data/prep/{prep.pk}/")
    connected, _ = await comm.connect(timeout=3)
    assert connected
    await database_sync_to_async(prep_progress)(prep=prep, progress={"status": "running", "fraction": 0.3})
    message = await comm.receive_json_from(timeout=3)
    assert message["type"] == "prep.update" and message["prep_id"] == prep.pk
    assert message["progress"]["fraction"] == 0.3
    await comm.disconnect()


async def test_a_viewer_hears_a_source_being_counted(seeded, viewer):
    source = await database_sync_to_async(DataSource.objects.get)(name="zh")
    comm = _communicator(viewer, f"/ws/data/sources/{source.pk}/")
    connected, _ = await comm.connect(timeout=3)
    assert connected
    source = await database_sync_to_async(move)(obj=source, field="count_status", to=JobPhase.QUEUED, actor="system")
    assert (await comm.receive_json_from(timeout=3))["count_status"] == "queued"
    await database_sync_to_async(count_progress)(source=source, progress={"documents": 12})
    message = await comm.receive_json_from(timeout=3)
    assert message["type"] == "source.update" and message["progress"] == {"documents": 12}
    await comm.disconnect()


async def test_anonymous_unknown_and_roleless_connections_are_refused(seeded, django_user_model, viewer):
    nobody = await database_sync_to_async(django_user_model.objects.create_user)(username="n", password="pw-1-x")
    for user, path, code in (
        (AnonymousUser(), "/ws/data/prep/1/", 4401),
        (nobody, "/ws/data/sources/1/", 4403),
        (viewer, "/ws/data/prep/999999/", 4404),
    ):
        comm = _communicator(user, path)
        connected, got = await comm.connect(timeout=3)
        await comm.disconnect()
        assert not connected and got == code, path
