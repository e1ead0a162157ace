"""Websocket consumers: logged-in users with the view role only; they relay group messages as JSON."""

from __future__ import annotations

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from runs.realtime.broadcast import RUN_LIST_GROUP, run_group
from runs.realtime.listeners import group_join

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class JsonFrames(AsyncJsonWebsocketConsumer):
    """Channels' JSON consumer raises on an empty, binary or malformed frame, which ends the connection's handler
    with a server error; such a frame is answered with an error message instead, and the socket stays open."""

    async def receive(self, text_data=None, bytes_data=None, **kwargs):
        if not text_data:
            await self.send_json({"type": "error", "message": "send JSON objects as text frames"})
            return
        try:
            content = await self.decode_json(text_data)
        except ValueError:
            await self.send_json({"type": "error", "message": "the frame is not JSON; send a JSON object"})
            return
        await self.receive_json(content, **kwargs)


class _Base(JsonFrames):
    group: str = ""

    async def _allowed(self) -> bool:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return False
        if not await database_sync_to_async(user.has_perm)("runs.view_run"):
            await self.close(code=CLOSE_FORBIDDEN)
            return False
        return True

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def run_status(self, event):
        await self.send_json(event)

    async def run_created(self, event):
        await self.send_json(event)

    async def run_points(self, event):
        await self.send_json(event)

    async def run_alert(self, event):
        await self.send_json(event)

    async def run_log(self, event):
        await self.send_json(event)

    async def run_phase(self, event):
        await self.send_json(event)

    async def run_attempt(self, event):
        await self.send_json(event)

    async def artifact_update(self, event):
        await self.send_json(event)

    async def deployment_update(self, event):
        await self.send_json(event)


class RunConsumer(_Base):
    async def connect(self):
        if not await self._allowed():
            return
        run_id = int(self.scope["url_route"]["kwargs"]["run_id"])
        from runs.models import Run

        if not await database_sync_to_async(Run.objects.filter(pk=run_id).exists)():
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = run_group(run_id)
        await group_join(self.channel_layer, self.group, self.channel_name)
        await self.accept()


class RunListConsumer(_Base):
    async def connect(self):
        if not await self._allowed():
            return
        self.group = RUN_LIST_GROUP
        await group_join(self.channel_layer, self.group, self.channel_name)
        await self.accept()
