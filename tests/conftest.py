"""Suite-wide fixtures: an embedded Redis when REDIS_URL is unset, Chromium for Playwright, users per role."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from tests.chromium import CHROMIUM_ARGS, chromium_path
from tests.slurm_fixture import slurm_cluster  # noqa: F401  (the real one-node Slurm, started on demand)


@pytest.fixture(scope="session", autouse=True)
def _redis_for_tests(tmp_path_factory):
    """The embedded Redis the settings point at when REDIS_URL is unset, started once per session."""
    from django.conf import settings

    if not settings.EMBEDDED_REDIS:
        yield
        return
    import redis

    from controlplane import embedded_redis

    try:
        redis.Redis(unix_socket_path=settings.EMBEDDED_REDIS_SOCKET).ping()
    except (redis.ConnectionError, FileNotFoundError):
        pass
    else:  # `make up` (or another test session) already serves it: share, and leave it running
        yield
        return
    proc = embedded_redis.start(settings.EMBEDDED_REDIS_SOCKET, workdir=str(settings.VAR_DIR))
    try:
        yield
    finally:
        embedded_redis.stop(proc, settings.EMBEDDED_REDIS_SOCKET)


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Let Django's per-test flush empty the audit table: SQLite deletes (its guard lifted), PostgreSQL truncates
    (its TRUNCATE trigger switched off in the test database; tests/runs/test_audit.py switches it on to try it)."""
    from django.db import connection

    with django_db_blocker.unblock():
        with connection.cursor() as cursor:
            if connection.vendor == "sqlite":
                cursor.execute("UPDATE runs_audit_guard SET locked = 0")
            else:
                cursor.execute("ALTER TABLE runs_auditevent DISABLE TRIGGER runs_auditevent_no_truncate")
    yield


@pytest.fixture(autouse=True)
def _audit_anchor_per_test(tmp_path_factory):
    """Each test's database starts empty, so each gets its own audit anchor file (outside the database)."""
    from django.test import override_settings

    with override_settings(AUDIT_ANCHOR=tmp_path_factory.mktemp("audit") / "anchor.log"):
        yield


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    return {
        **browser_type_launch_args,
        "executable_path": chromium_path(),
        "args": [*browser_type_launch_args.get("args", []), *CHROMIUM_ARGS],
    }


@pytest.fixture
def seeded(db):
    from runs.services.seed import seed_defaults

    seed_defaults()


def _user(django_user_model, username: str, role: str | None):
    from django.contrib.auth.models import Group

    from runs.services.roles import ensure_roles

    ensure_roles()
    user = django_user_model.objects.create_user(username=username, password="pw-for-tests-1")
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


@pytest.fixture
def viewer(db, django_user_model):
    return _user(django_user_model, "vera", "viewer")


@pytest.fixture
def operator(db, django_user_model):
    return _user(django_user_model, "otto", "operator")


@pytest.fixture
def admin_user_role(db, django_user_model):
    return _user(django_user_model, "ada", "admin")


def pytest_collection_modifyitems(config, items):
    """Browser tests last: Playwright's sync API keeps an event loop running in the main thread for the rest of
    the session, after which pytest-asyncio (the websocket consumer tests) can no longer start one."""
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)


@pytest.fixture(autouse=True)
def _no_warm_launcher_in_process(settings):
    """Local launches made inside the test process start DeepSpeed's launcher themselves; the warm launcher is
    tested on its own (tests/workers/test_local_backend.py) and by the end-to-end stack's worker."""
    settings.WARM_LAUNCHER = False


def pytest_terminal_summary(terminalreporter):
    """The property-based suites' case counts (tests/fuzz.py), when any ran."""
    from tests.fuzz import CASES

    if CASES:
        terminalreporter.write_line(f"fuzz cases: {sum(CASES.values())} in all")
        for name, cases in sorted(CASES.items()):
            terminalreporter.write_line(f"  {cases:6d}  {name}")
