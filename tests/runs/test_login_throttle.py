"""Failed logins are throttled (django-axes): after the limit, the username from that address is locked out, even
with the right password, until the cool-off passes or an admin resets it; other users and addresses go on."""

from __future__ import annotations

import pytest
from django.core.management import call_command

pytestmark = pytest.mark.django_db

LOGIN = "/accounts/login/"


def _login(client, username: str, password: str, ip: str = "10.0.0.1"):
    return client.post(LOGIN, {"username": username, "password": password}, REMOTE_ADDR=ip)


def test_the_limit_locks_the_username_from_that_address_out(client, viewer, settings):
    limit = settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        assert _login(client, "vera", "wrong").status_code == 200  # the form again, with its error
    locked = _login(client, "vera", "wrong")
    assert locked.status_code == 429 and b"Too many failed logins" in locked.content
    assert _login(client, "vera", "pw-for-tests-1").status_code == 429  # the right password does not help now
    assert _login(client, "vera", "pw-for-tests-1", ip="10.0.0.2").status_code == 302  # another address


def test_an_admin_reset_unlocks(client, viewer, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login(client, "vera", "wrong")
    assert _login(client, "vera", "pw-for-tests-1").status_code == 429
    call_command("axes_reset_username", "vera")
    assert _login(client, "vera", "pw-for-tests-1").status_code == 302


def test_a_success_resets_the_count(client, viewer, settings):
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        _login(client, "vera", "wrong")
    assert _login(client, "vera", "pw-for-tests-1").status_code == 302
    client.post("/accounts/logout/")
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, "vera", "wrong").status_code == 200
