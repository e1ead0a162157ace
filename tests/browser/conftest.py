"""Browser journeys only: Playwright's sync API runs an asyncio event loop in the test's own thread, so Django
takes the journeys' plain ORM calls (the test database's setup, seeding rows, reading them back) for sync code on
an event loop and refuses them. The journeys are sync code that merely shares the thread with Playwright's loop,
so the guard is lifted here, for these tests alone; everywhere else it stays on and catches real ORM calls from
async code. Session scope: the loop lives for the rest of the session once started, and the browser tests run
last (tests/conftest.py sorts them), so the lifted guard never reaches the other tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _orm_beside_playwrights_loop():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield
