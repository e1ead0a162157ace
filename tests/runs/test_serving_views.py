"""Checkpoints and deployments: pages by role and clear refusals."""

from __future__ import annotations

import pytest

from runs.models import Artifact
from tests.runs.factories import deployment_for


@pytest.mark.django_db
def test_a_viewer_sees_checkpoints_without_action_buttons(client, checkpointed, viewer):
    client.force_login(viewer)
    page = client.get(f"/runs/{checkpointed.pk}/checkpoints/")
    assert page.status_code == 200
    body = page.content.decode()
    assert "loss=7.25" in body and "Quantize</button>" not in body and "Resume</button>" not in body


@pytest.mark.django_db
def test_an_operator_quantizes_from_the_page(client, checkpointed, operator):
    client.force_login(operator)
    checkpoint = checkpointed.checkpoints.get()
    body = client.get(f"/runs/{checkpointed.pk}/checkpoints/").content.decode()
    assert "Quantize</button>" in body and "Resume</button>" in body and f"checkpoint={checkpoint.pk}" in body
    response = client.post(
        f"/runs/{checkpointed.pk}/checkpoints/{checkpoint.pk}/quantize/", {"methods": ["nf4"]}, follow=True
    )
    assert response.status_code == 200
    artifact = Artifact.objects.get()
    assert artifact.methods == ["nf4"] and "quantizing step_000004" in response.content.decode()


@pytest.mark.django_db
def test_a_bad_quantize_request_explains_itself(client, checkpointed, operator):
    client.force_login(operator)
    checkpoint = checkpointed.checkpoints.get()
    response = client.post(
        f"/runs/{checkpointed.pk}/checkpoints/{checkpoint.pk}/quantize/", {"methods": ["gptq"]}, follow=True
    )
    assert response.status_code == 200
    assert "methods: Unknown method &#x27;gptq&#x27;; choose nf4, int8 or both." in response.content.decode()
    assert not Artifact.objects.exists()


@pytest.mark.django_db
def test_a_bad_retention_value_names_the_field(client, checkpointed, operator):
    client.force_login(operator)
    response = client.post(
        f"/runs/{checkpointed.pk}/checkpoints/retention/", {"keep_last": "many", "keep_every": "0"}, follow=True
    )
    assert "keep_last: keep last must be a whole number" in response.content.decode()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url",
    [
        "/runs/{run}/checkpoints/{ckpt}/quantize/",
        "/runs/{run}/checkpoints/{ckpt}/resume/",
        "/runs/{run}/checkpoints/retention/",
    ],
)
def test_a_viewer_cannot_act(client, checkpointed, viewer, url):
    client.force_login(viewer)
    ckpt = checkpointed.checkpoints.get().pk
    assert client.post(url.format(run=checkpointed.pk, ckpt=ckpt)).status_code == 403


@pytest.mark.django_db
def test_fork_from_a_checkpoint_prefills_the_form_and_starts_there(client, checkpointed, operator):
    client.force_login(operator)
    checkpoint = checkpointed.checkpoints.get()
    page = client.get(f"/runs/new/?fork={checkpointed.pk}&checkpoint={checkpoint.pk}").content.decode()
    assert 'name="checkpoint"' in page and "Starts from checkpoint step_000004" in page


@pytest.mark.django_db
def test_deployment_pages_by_role(client, checkpointed, operator, viewer):
    deployment = deployment_for(checkpointed, actor=operator)
    client.force_login(viewer)
    assert deployment.name in client.get("/deployments/").content.decode()
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert "can watch but not send prompts" in page and "Stop</button>" not in page
    assert client.post(f"/deployments/{deployment.pk}/stop/").status_code == 403
    client.force_login(operator)
    page = client.get(f"/deployments/{deployment.pk}/").content.decode()
    assert 'id="playground-form"' in page and "Stop</button>" in page
    client.post(f"/deployments/{deployment.pk}/stop/")
    deployment.refresh_from_db()
    assert deployment.status == "stopping"
