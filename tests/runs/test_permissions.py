"""Anonymous and viewer requests to every mutating URL are refused; operators get through."""

import pytest
from django.urls import reverse

from runs.models import DataMixRecipe, Run, RunStatus
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


@pytest.fixture
def targets(seeded, operator):
    run = tiny_run(owner=operator)
    recipe = DataMixRecipe.objects.get(name="bilingual-demo")
    return [
        ("get", reverse("run-new")),
        ("post", reverse("run-new")),
        ("get", reverse("run-edit", args=[run.pk])),
        ("post", reverse("run-edit", args=[run.pk])),
        ("post", reverse("run-launch", args=[run.pk])),
        ("post", reverse("run-cancel", args=[run.pk])),
        ("get", reverse("recipe-new")),
        ("post", reverse("recipe-new")),
        ("get", reverse("recipe-edit", args=[recipe.pk])),
        ("post", reverse("recipe-edit", args=[recipe.pk])),
    ]


READ_URLS = ["run-list", "recipe-list", "run-compare"]


def test_anonymous_is_sent_to_login_everywhere(client, targets):
    for method, url in targets:
        response = getattr(client, method)(url)
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), (method, url)
    for name in READ_URLS:
        assert client.get(reverse(name)).status_code == 302
    assert Run.objects.get().status == RunStatus.DRAFT


def test_anonymous_api_calls_get_401_json(client, seeded):
    response = client.post(reverse("run-plan"), {}, HTTP_ACCEPT="application/json")
    assert response.status_code == 401 and "log in" in response.json()["error"]


def test_viewer_is_refused_every_mutation(client, targets, viewer):
    client.force_login(viewer)
    for method, url in targets:
        response = getattr(client, method)(url)
        assert response.status_code == 403, (method, url)
        assert b"Traceback" not in response.content
    assert Run.objects.get().status == RunStatus.DRAFT
    assert DataMixRecipe.objects.count() == 1


def test_viewer_can_read(client, seeded, operator, viewer):
    run = tiny_run(owner=operator)
    client.force_login(viewer)
    for name in READ_URLS:
        assert client.get(reverse(name)).status_code == 200
    page = client.get(reverse("run-detail", args=[run.pk]))
    assert page.status_code == 200 and b"Launch" not in page.content


def test_a_user_without_a_role_reads_nothing(client, seeded, django_user_model):
    nobody = django_user_model.objects.create_user(username="nobody", password="pw-for-tests-1")
    client.force_login(nobody)
    assert client.get(reverse("run-list")).status_code == 403


def test_audit_page_is_for_admins_only(client, seeded, operator, admin_user_role):
    client.force_login(operator)
    assert client.get(reverse("audit-list")).status_code == 403
    client.force_login(admin_user_role)
    assert client.get(reverse("audit-list")).status_code == 200


def test_operator_can_launch_and_cancel(client, seeded, operator):
    run = tiny_run(owner=operator)
    client.force_login(operator)
    client.post(reverse("run-launch", args=[run.pk]))
    run.refresh_from_db()
    assert run.status == RunStatus.QUEUED
    client.post(reverse("run-cancel", args=[run.pk]))
    run.refresh_from_db()
    assert run.status == RunStatus.CANCELLED


def test_csrf_is_enforced(seeded, operator):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(operator)
    run = tiny_run(owner=operator)
    assert strict.post(reverse("run-launch", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert run.status == RunStatus.DRAFT
