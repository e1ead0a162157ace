"""Checkpoints, deployments and playground: pages by role, clear refusals, and the playground websocket's guards."""

from __future__ import annotations

import pytest
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import AnonymousUser

from runs.models import Artifact, Checkpoint, Deployment, JobPhase, Run, RunStatus
from runs.playground import playground_params
from runs.routing import websocket_urlpatterns
from runs.services.artifacts import artifact_finish
from runs.services.deployments import deployment_create
from runs.services.serving_transitions import move
from tests.runs.factories import tiny_run


@pytest.fixture
def checkpointed(seeded, operator, settings, tmp_path):
    settings.RUNS_DIR = tmp_path / "runs"
    run = tiny_run(owner=operator, name="served")
    folder = settings.RUNS_DIR / f"run-{run.pk}" / "checkpoints" / "step_000004"
    folder.mkdir(parents=True)
    Run.objects.filter(pk=run.pk).update(run_dir=str(folder.parent.parent), status=RunStatus.SUCCEEDED)
    Checkpoint.objects.create(run=run, step=4, tag=folder.name, path=str(folder), metrics={"loss": 7.25})
    return Run.objects.get(pk=run.pk)


def _deployment(run, operator) -> Deployment:
    artifact = Artifact.objects.create(
        run=run, checkpoint=run.checkpoints.first(), step=4, tag="step_000004", methods=["nf4"], created_by=operator
    )
    artifact = move(obj=artifact, to=JobPhase.RUNNING, actor="system")
    artifact = artifact_finish(artifact=artifact, status=JobPhase.SUCCEEDED, report={})
    return deployment_create(artifact=artifact, variant="nf4", engine="native", actor=operator)


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
    deployment = _deployment(checkpointed, operator)
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


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ({"prompt": "  "}, "prompt: type something"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens: 0 is outside 1 to 4096"),
        ({"prompt": "hi", "max_tokens": 2.5}, "max_tokens: must be a whole number"),
        ({"prompt": "hi", "temperature": -1}, "temperature: -1 is outside"),
        ({"prompt": "hi", "top_p": "high"}, "top_p: must be a number"),
        ("just text", "send a JSON object"),
    ],
)
def test_playground_parameters_are_checked_with_the_field_named(content, words):
    with pytest.raises(ValueError, match=words):
        playground_params(content)


class _WithUser:
    def __init__(self, inner, user):
        self.inner, self.user = inner, user

    async def __call__(self, scope, receive, send):
        return await self.inner({**scope, "user": self.user}, receive, send)


async def _connect(user, deployment_id):
    comm = WebsocketCommunicator(
        _WithUser(URLRouter(websocket_urlpatterns), user), f"/ws/deployments/{deployment_id}/playground/"
    )
    connected, code = await comm.connect(timeout=3)
    return comm, connected, code


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_playground_refuses_anonymous_and_viewers_and_waits_for_a_running_endpoint(
    checkpointed, operator, viewer
):
    from channels.db import database_sync_to_async

    deployment = await database_sync_to_async(_deployment)(checkpointed, operator)
    for user, expected in ((AnonymousUser(), 4401), (viewer, 4403)):
        comm, connected, code = await _connect(user, deployment.pk)
        await comm.disconnect()
        assert not connected and code == expected
    comm, connected, code = await _connect(operator, 999_999)
    await comm.disconnect()
    assert not connected and code == 4404
    comm, connected, _ = await _connect(operator, deployment.pk)
    assert connected
    await comm.send_json_to({"prompt": "hello", "max_tokens": 4})
    reply = await comm.receive_json_from(timeout=3)
    await comm.disconnect()
    assert reply == {"type": "error", "message": "The endpoint is starting; prompts need a running one."}
