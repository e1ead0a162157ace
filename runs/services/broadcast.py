"""Push to websocket groups after the transaction commits; a down channel layer never fails a request."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

RUN_LIST_GROUP = "runs"


def run_group(run_id: int) -> str:
    return f"run-{run_id}"


def send_now(group: str, message: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(group, message)
    except Exception:  # the database holds the truth; a missed push is back-filled on reconnect
        log.warning("broadcast to %s failed", group, exc_info=True)


def broadcast_on_commit(group: str, message: dict) -> None:
    transaction.on_commit(lambda: send_now(group, message))
