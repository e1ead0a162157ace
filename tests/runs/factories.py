"""Small builders for tests: real objects through the real services."""

from __future__ import annotations

from runs.models import Artifact, Cluster, DataMixRecipe, Deployment, JobPhase, Run
from runs.planning.presets import preset_config
from runs.services.artifacts import artifact_finish
from runs.services.deployments import deployment_create
from runs.services.runs import run_create
from runs.services.serving_transitions import move


def tiny_run(*, owner, name: str = "tiny-test", **overrides) -> Run:
    cfg = preset_config("tiny")
    for path, value in overrides.items():
        node = cfg
        *parents, leaf = path.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return run_create(
        owner=owner,
        name=name,
        preset="tiny",
        trainer="reference",
        cluster=Cluster.objects.get(name="local-cpu"),
        recipe=DataMixRecipe.objects.get(name="bilingual-demo", version=1),
        config=cfg,
    )


def deployment_for(run: Run, *, actor) -> Deployment:
    """An NF4 deployment (starting) of the run's first checkpoint, through a finished quantize artifact."""
    artifact = Artifact.objects.create(
        run=run, checkpoint=run.checkpoints.first(), step=4, tag="step_000004", methods=["nf4"], created_by=actor
    )
    artifact = move(obj=artifact, to=JobPhase.RUNNING, actor="system")
    artifact = artifact_finish(artifact=artifact, status=JobPhase.SUCCEEDED, report={})
    return deployment_create(artifact=artifact, variant="nf4", engine="native", actor=actor)
