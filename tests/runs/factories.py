"""Small builders for tests: real objects through the real services."""

from __future__ import annotations

from runs.models import Cluster, DataMixRecipe, Run
from runs.presets import preset_config
from runs.services.runs import run_create


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
