"""Websockets: logged-in users with a role only; status changes arrive as JSON."""

import pytest
from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from runs.realtime.routing import websocket_urlpatterns
from runs.services.runs import run_launch
from tests.runs.factories import tiny_run

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

app = AuthMiddlewareStack(URLRouter(websocket_urlpatterns))


class _WithUser:
    """Put a user in the scope the way AuthMiddlewareStack would after a session login."""

    def __init__(self, inner, user):
        self.inner, self.user = inner, user

    async def __call__(self, scope, receive, send):
        return await self.inner({**scope, "user": self.user}, receive, send)


def _communicator(user, path):
    return WebsocketCommunicator(_WithUser(URLRouter(websocket_urlpatterns), user), path)


async def test_anonymous_connection_is_refused(seeded):
    comm = _communicator(AnonymousUser(), "/ws/runs/")
    connected, code = await comm.connect(timeout=3)
    await comm.disconnect()  # lets the application instance finish, so the event loop closes cleanly
    assert not connected and code == 4401


async def test_a_user_without_a_role_is_refused(seeded, django_user_model):
    nobody = await database_sync_to_async(django_user_model.objects.create_user)(
        username="n", password="pw-for-tests-1"
    )
    comm = _communicator(nobody, "/ws/runs/")
    connected, code = await comm.connect(timeout=3)
    await comm.disconnect()
    assert not connected and code == 4403


async def test_unknown_run_is_refused(seeded, viewer):
    comm = _communicator(viewer, "/ws/runs/999999/")
    connected, code = await comm.connect(timeout=3)
    await comm.disconnect()
    assert not connected and code == 4404


async def test_viewer_receives_status_changes(seeded, viewer, operator):
    run = await database_sync_to_async(tiny_run)(owner=operator)
    comm = _communicator(viewer, f"/ws/runs/{run.pk}/")
    connected, _ = await comm.connect(timeout=3)
    assert connected
    await database_sync_to_async(run_launch)(actor=operator, run=run)
    message = await comm.receive_json_from(timeout=3)
    assert message["status"] == "queued" and message["run_id"] == run.pk
    await comm.disconnect()


async def test_every_message_the_services_send_to_a_run_page_reaches_it(seeded, viewer, operator):
    """Each run-group message type the product broadcasts (found in its source) is forwarded by the page's consumer;
    a type without a handler would close the socket with a server error."""
    import re
    from pathlib import Path

    from channels.layers import get_channel_layer

    from runs.realtime.broadcast import run_group

    root = Path(__file__).resolve().parents[3] / "runs"
    kinds = sorted({m for f in root.rglob("*.py") for m in re.findall(r'"type": "(run\.[a-z_]+)"', f.read_text())})
    assert "run.attempt" in kinds and "run.points" in kinds
    run = await database_sync_to_async(tiny_run)(owner=operator)
    comm = _communicator(viewer, f"/ws/runs/{run.pk}/")
    connected, _ = await comm.connect(timeout=3)
    assert connected
    layer = get_channel_layer()
    for kind in kinds:
        await layer.group_send(run_group(run.pk), {"type": kind, "run_id": run.pk})
        message = await comm.receive_json_from(timeout=3)
        assert message["type"] == kind
    await comm.disconnect()


async def test_session_cookie_is_required_by_the_real_stack(seeded):
    comm = WebsocketCommunicator(app, "/ws/runs/")
    connected, code = await comm.connect(timeout=3)
    await comm.disconnect()  # lets the application instance finish, so the event loop closes cleanly
    assert not connected and code == 4401


async def test_a_handshake_after_the_database_dropped_its_connections_is_accepted(seeded, viewer, operator):
    """PostgreSQL restarted (or an idle connection was cut): the consumer's pooled connection is dead. The first
    handshake afterwards must check it and reconnect, not fail with a server error."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL terminates connections; SQLite has none to lose")
    import psycopg

    run = await database_sync_to_async(tiny_run)(owner=operator)
    first = _communicator(viewer, f"/ws/runs/{run.pk}/")
    assert (await first.connect(timeout=5))[0]
    await first.disconnect()

    def pooled_pid() -> int:  # in the thread the consumers' database calls run in
        connection.ensure_connection()
        return connection.connection.info.backend_pid

    pid = await database_sync_to_async(pooled_pid)()

    def cut(pid: int) -> None:
        params = connection.get_connection_params()
        with psycopg.connect(**params, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])

    await database_sync_to_async(cut, thread_sensitive=False)(pid)
    again = _communicator(viewer, f"/ws/runs/{run.pk}/")
    connected, _ = await again.connect(timeout=5)
    await again.disconnect()
    assert connected
