"""The seam between the API's run input (a preset or a base run, plus overrides by config path) and the run form:
the API fills the same form the page posts, so a run made either way is checked by the same fields, the same
validator and the same planner, and refused with the same messages."""

from __future__ import annotations

from typing import Any

from ninja import Schema
from pydantic import Field

from runs.api.schemas import is_id
from runs.forms import RunForm
from runs.forms.run_fields import ALL_FIELDS, BY_PATH
from runs.forms.run_form import format_curriculum
from runs.models import Cluster, DataMixRecipe
from runs.planning.presets import PRESETS, preset_config
from runs.services.diff import flatten
from runs.services.seed import PRESET_CLUSTERS


class CurriculumStage(Schema):
    start_step: int = Field(ge=0, le=2**53)
    seq_len: int = Field(ge=1, le=2**31)


class RunChanges(Schema):
    """Everything is optional: what is left out keeps the base's value (the preset's, or the run's)."""

    name: str | None = Field(None, max_length=100)
    trainer: str | None = Field(None, description="reference, own_script or plan_only.")
    cluster: int | str | None = Field(None, description="The cluster's id or name.")
    recipe: int | str | None = Field(None, description="A recipe version's id, or a recipe name (its latest version).")
    script_path: str | None = Field(None, max_length=500, description="For own_script: the .py file's absolute path.")
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description='Config path -> value, e.g. {"batch.micro_batch": 2, "parallel.zero_stage": 3}; '
        "GET /api/v1/presets/ lists each preset's config.",
    )
    curriculum: str | list[CurriculumStage] | None = Field(
        None, description='Sequence-length stages: "0:256, 3000:2048" or [{start_step, seq_len}, ...].'
    )
    fit_override_reason: str = Field(
        "",
        max_length=300,
        description="Only when the plan says the run does not fit: why it should run anyway (audited).",
    )


class RunIn(RunChanges):
    name: str = Field(min_length=1, max_length=100)
    preset: str = Field("tiny", description="tiny, single_h200 or r1_guide (GET /api/v1/presets/).")


class PlanIn(RunChanges):
    preset: str = Field("tiny", description="tiny, single_h200 or r1_guide (GET /api/v1/presets/).")


class InputRefused(Exception):
    """Input the form cannot even be filled from; each entry is (field, message)."""

    def __init__(self, errors: list[tuple[str, str]]):
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))
        self.errors = errors


def _cluster(raw: int | str | None, default: Cluster | None) -> Cluster:
    if raw is None:
        if default is None:
            raise InputRefused([("cluster", "Name a cluster (GET /api/v1/clusters/ lists them).")])
        return default
    found = Cluster.objects.filter(pk=raw).first() if is_id(raw) else Cluster.objects.filter(name=str(raw)).first()
    if found is None:
        raise InputRefused([("cluster", f"There is no cluster {raw!r}; GET /api/v1/clusters/ lists them.")])
    return found


def _recipe(raw: int | str | None, default: DataMixRecipe | None) -> DataMixRecipe:
    if raw is None:
        if default is None:
            raise InputRefused([("recipe", "Name a data-mix recipe (GET /api/v1/recipes/ lists them).")])
        return default
    if is_id(raw):
        found = DataMixRecipe.objects.filter(pk=raw).first()
    else:
        found = DataMixRecipe.objects.filter(name=str(raw)).order_by("-version").first()
    if found is None:
        raise InputRefused([("recipe", f"There is no recipe {raw!r}; GET /api/v1/recipes/ lists them.")])
    return found


def _checked_override(path: str, value: Any) -> str | None:
    """Why an override cannot go into the form, or None. The form's own fields check ranges and choices; what
    they would read loosely (any truthy value as a yes) is held to JSON's types here."""
    field = BY_PATH.get(path)
    if field is None:
        known = ", ".join(sorted(BY_PATH))
        return f"{path!r} is not a config path the run form sets; use one of: {known}."
    if field.kind == "bool" and not isinstance(value, bool):
        return f"{value!r} is not true or false."
    if field.kind in ("int", "float") and (isinstance(value, bool) or not isinstance(value, int | float)):
        return f"{value!r} is not a number."
    if field.kind == "choice" and (isinstance(value, bool) or not isinstance(value, str | int)):
        return f"{value!r} is not one of {', '.join(v for v, _ in field.choices)}."
    return None


def build_form(
    changes: RunChanges,
    *,
    preset: str,
    base_config: dict | None = None,
    base: dict[str, Any] | None = None,
    name_required: bool = True,
) -> RunForm:
    """The bound run form for `changes` laid over a base: a preset's config, or a run's (fork, edit).

    `base` holds the base's name, trainer, cluster, recipe and script path (a run's), else the preset's defaults.
    """
    if preset not in PRESETS:
        raise InputRefused([("preset", f"Unknown preset {preset!r}; choose one of {', '.join(PRESETS)}.")])
    base = base or {}
    config = base_config if base_config is not None else preset_config(preset)
    default_cluster = base.get("cluster") or Cluster.objects.filter(name=PRESET_CLUSTERS.get(preset, "")).first()
    default_recipe = base.get("recipe") or DataMixRecipe.objects.order_by("name", "-version").first()
    errors = [(f"overrides.{p}", why) for p, v in changes.overrides.items() if (why := _checked_override(p, v))]
    cluster = recipe = None
    try:
        cluster = _cluster(changes.cluster, default_cluster)
    except InputRefused as exc:
        errors += exc.errors
    try:
        recipe = _recipe(changes.recipe, default_recipe)
    except InputRefused as exc:
        errors += exc.errors
    if errors:
        raise InputRefused(errors)
    flat = flatten(config)
    data: dict[str, Any] = {cf.name: flat[cf.path] for cf in ALL_FIELDS if flat.get(cf.path) is not None}
    data.update({BY_PATH[path].name: value for path, value in changes.overrides.items()})
    curriculum = changes.curriculum
    if curriculum is None:
        curriculum = format_curriculum(config.get("curriculum", []))
    elif isinstance(curriculum, list):
        curriculum = format_curriculum([stage.model_dump() for stage in curriculum])
    name = changes.name if changes.name is not None else base.get("name", "")
    data.update(
        name=name if (name or name_required) else "plan",
        preset=preset,
        trainer=changes.trainer or base.get("trainer") or PRESETS[preset].trainer,
        cluster=cluster.pk if cluster else None,
        recipe=recipe.pk if recipe else None,
        script_path=changes.script_path if changes.script_path is not None else base.get("script_path", ""),
        curriculum=curriculum,
        fit_override_reason=changes.fit_override_reason,
    )
    return RunForm(data, preset=preset)


def form_field_path(name: str) -> str:
    """The API field a form error belongs to: run-form field `batch__micro_batch` is `overrides.batch.micro_batch`."""
    if name == "__all__":
        return "body"
    field = next((cf for cf in ALL_FIELDS if cf.name == name), None)
    return f"overrides.{field.path}" if field else name


def form_errors(form: RunForm) -> list[tuple[str, str]]:
    return [(form_field_path(name), str(message)) for name, messages in form.errors.items() for message in messages]
