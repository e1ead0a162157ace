"""The control plane's validation and the job's loader agree on generated run configs: what the form and the API
accept, the job's loader (jobs.common.run_config.parse_run_config) accepts, and a config the loader refuses is
refused by the control plane under the same field."""

from __future__ import annotations

import copy

from hypothesis import given
from hypothesis import strategies as st

from jobs.common.run_config import CHOICES, FIELDS, RANGES, ConfigError, parse_run_config, range_key
from runs.planning.presets import PRESETS, preset_config
from runs.planning.validation import job_field, validate_config
from tests.fuzz import count, fuzz_settings

# The schema's own field names ("curriculum[].seq_len" is reached through the presets' curricula) and every
# field the presets set.
SCHEMA_PATHS = sorted(name for name in FIELDS if "[]" not in name)


def _leaf_paths(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaf_paths(value, f"{prefix}{key}.")
    elif isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        for i, value in enumerate(node):
            yield from _leaf_paths(value, f"{prefix}{i}.")
    else:
        yield prefix.rstrip(".")


def _values_for(path: str):
    """Values near the field's rule (its range's bounds, its choices) and values of the wrong kind."""
    near: list = [None, True, "x", [], {}]
    rng = RANGES.get(range_key(path))
    if rng is not None:
        for bound in (rng.lo, rng.hi):
            near += [bound, bound - 1, bound + 1, bound / 2, bound * 2]
        near += [int(rng.lo), int(rng.hi), 0, -1, float("inf")]
    near += list(CHOICES.get(path, ())) + ["linear", "MOE"]
    return st.one_of(st.sampled_from(near), st.integers(-3, 2**20), st.floats(-10, 1e7, allow_nan=False))


def _set(cfg: dict, path: str, value) -> None:
    node = cfg
    *parents, leaf = path.split(".")
    for key in parents:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        elif isinstance(node, dict):
            node = node.setdefault(key, {})
        else:
            return
    if isinstance(node, dict):
        node[leaf] = value


@fuzz_settings(300)
@given(data=st.data())
def test_the_control_plane_and_the_jobs_loader_agree_on_run_configs(data):
    count("run configs: control plane vs job loader")
    cfg = preset_config(data.draw(st.sampled_from(sorted(PRESETS))))
    paths = sorted(set(_leaf_paths(cfg)) | set(SCHEMA_PATHS))
    for path in data.draw(st.lists(st.sampled_from(paths), max_size=3, unique=True)):
        _set(cfg, path, data.draw(_values_for(path)))
    issues = validate_config(copy.deepcopy(cfg), trainer="reference")
    fields = {issue.field for issue in issues}
    try:
        parse_run_config(copy.deepcopy(cfg))
    except ConfigError as exc:
        # Refused by the job: refused here too, under the same field.
        assert job_field(exc.field) in fields, (exc, issues)
    # Accepted by the job: the control plane may still refuse it for what needs the control plane (cluster fit,
    # capabilities, recipes, alerts); accepted here implies accepted by the job, which the branch above covers.


def test_the_loader_refuses_a_schedule_the_schema_does_not_list():
    cfg = preset_config("tiny")
    cfg["optimizer"]["schedule"] = "linear"
    issues = validate_config(cfg, trainer="reference")
    assert [i.field for i in issues] == ["optimizer.schedule"]
    assert "cosine, constant" in issues[0].message


def test_a_recipe_source_named_by_a_list_is_an_issue_not_an_error():
    cfg = preset_config("r1_guide")
    cfg["data"]["recipe"]["sources"][0]["name"] = []
    issues = validate_config(cfg, trainer="reference")
    assert "data.recipe.sources.0.name" in {i.field for i in issues}
