"""Websocket of the data pages: one source's count (ws/data/sources/<id>/) or one prep run (ws/data/prep/<id>/);
relays `source.update` and `prep.update` (runs.services.data_prep) to logged-in users who may read data."""

from __future__ import annotations

from collections.abc import Callable

from channels.db import database_sync_to_async

from runs.realtime.consumers import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED, JsonFrames
from runs.realtime.listeners import group_join
from runs.services.data_prep import prep_group, source_group


class DataConsumer(JsonFrames):
    group = ""

    async def connect(self):
        from runs.models import DataSource, PrepRun

        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        kwargs = self.scope["url_route"]["kwargs"]
        model: type[PrepRun] | type[DataSource]
        group: Callable[[int], str]
        if "prep_id" in kwargs:
            model, pk, perm, group = PrepRun, int(kwargs["prep_id"]), "runs.view_preprun", prep_group
        else:
            model, pk, perm, group = DataSource, int(kwargs["source_id"]), "runs.view_datasource", source_group
        if not await database_sync_to_async(user.has_perm)(perm):
            await self.close(code=CLOSE_FORBIDDEN)
            return
        if not await database_sync_to_async(model.objects.filter(pk=pk).exists)():
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = group(pk)
        await group_join(self.channel_layer, self.group, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def prep_update(self, event):
        await self.send_json(event)

    async def source_update(self, event):
        await self.send_json(event)
