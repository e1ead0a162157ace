"""Browser journeys only: Playwright's sync API runs an asyncio event loop in the test's own thread, so Django
takes the journey's plain ORM calls (seeding rows, reading them back) for sync code on an event loop and refuses
them. The journeys are sync code that merely shares the thread with Playwright's loop, so the guard is lifted
here, for these tests alone; everywhere else it stays on and catches real ORM calls from async code."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _orm_beside_playwrights_loop(monkeypatch):
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
