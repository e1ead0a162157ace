"""Data-mix recipes: a version is never changed; editing writes the next version."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.db.models import Max

from jobs.data.prep import settings as prep_settings
from runs.models import DataMixRecipe, DataSource, RecipeEntry
from runs.services.audit import audit_record
from runs.services.diff import config_diff


class RecipeInvalid(Exception):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _clean_weights(weights: dict[str, Any]) -> dict[str, Decimal]:
    errors: dict[str, str] = {}
    clean: dict[str, Decimal] = {}
    for name, raw in weights.items():
        if raw in (None, ""):
            continue
        try:
            value = Decimal(str(raw)).quantize(Decimal("0.01"))
            if not value.is_finite():  # NaN quantizes, then refuses every comparison
                raise InvalidOperation
        except InvalidOperation:
            errors[name] = f"Weight of {name} is not a number; enter a percentage such as 35."
            continue
        if value == 0:
            continue
        if value < 0 or value > 100:
            errors[name] = f"Weight of {name} is {value} %; use a value between 0.01 and 100."
            continue
        clean[name] = value
    if not clean and not errors:
        errors["__all__"] = "The recipe has no sources; give at least one source a weight above 0."
    total = sum(clean.values(), Decimal(0))
    if not errors and total != Decimal(100):
        errors["__all__"] = (
            f"Weights sum to {total} %; they must sum to exactly 100 % (adjust by {Decimal(100) - total})."
        )
    unknown = set(clean) - set(DataSource.objects.filter(name__in=clean).values_list("name", flat=True))
    for name in sorted(unknown):
        errors[name] = f"There is no data source named {name!r}; create it first or pick an existing one."
    if errors:
        raise RecipeInvalid(errors)
    return clean


def _clean_settings(raw: dict | None) -> dict:
    """The complete preparation settings (defaults filled in), or RecipeInvalid naming each bad field as
    `prep.<section>.<key>`."""
    try:
        return prep_settings.validate(raw)
    except prep_settings.SettingsInvalid as exc:
        raise RecipeInvalid({f"prep.{k}": v for k, v in exc.errors.items()}) from exc


def recipe_settings(recipe: DataMixRecipe) -> dict:
    """A version's preparation settings with the defaults filled in (versions from before settings: defaults)."""
    return prep_settings.validate(recipe.prep_settings)


def _write_version(*, actor: Any, name: str, version: int, notes: str, weights: dict[str, Decimal],
                   settings: dict) -> DataMixRecipe:  # fmt: skip
    recipe = DataMixRecipe.objects.create(
        name=name, version=version, notes=notes, created_by=actor, prep_settings=settings
    )
    sources = {s.name: s for s in DataSource.objects.filter(name__in=weights)}
    RecipeEntry.objects.bulk_create(
        RecipeEntry(recipe=recipe, source=sources[src], weight=w) for src, w in weights.items()
    )
    return recipe


def recipe_create(
    *,
    actor: Any,
    name: str,
    weights: dict[str, Any],
    notes: str = "",
    settings: dict | None = None,
) -> DataMixRecipe:
    clean_settings = _clean_settings(settings)
    with transaction.atomic():
        clean = _clean_weights(weights)
        if DataMixRecipe.objects.filter(name=name).exists():
            raise RecipeInvalid(
                {"name": f"A recipe named {name!r} exists; edit it to make a new version, or pick another name."}
            )
        recipe = _write_version(actor=actor, name=name, version=1, notes=notes, weights=clean, settings=clean_settings)
        audit_record(
            actor=actor,
            action="recipe.create",
            obj=recipe,
            diff={f"weights.{k}": [None, float(v)] for k, v in clean.items()},
        )
    return recipe


def recipe_new_version(
    *,
    actor: Any,
    base: DataMixRecipe,
    weights: dict[str, Any],
    notes: str | None = None,
    settings: dict | None = None,
) -> DataMixRecipe:
    """The next version; `notes` None keeps the base version's notes, `settings` None its preparation settings."""
    notes = base.notes if notes is None else notes
    clean_settings = _clean_settings(recipe_settings(base) if settings is None else settings)
    with transaction.atomic():
        clean = _clean_weights(weights)
        latest = DataMixRecipe.objects.select_for_update().filter(name=base.name).aggregate(v=Max("version"))["v"]
        before = base.weights()
        if (
            {k: float(v) for k, v in clean.items()} == before
            and clean_settings == recipe_settings(base)
            and notes == base.notes
        ):
            raise RecipeInvalid(
                {
                    "__all__": "Nothing changed: the weights, preparation settings and notes equal this version's; "
                    "change one to make a new version."
                }
            )
        recipe = _write_version(
            actor=actor, name=base.name, version=(latest or 0) + 1, notes=notes, weights=clean, settings=clean_settings
        )
        audit_record(
            actor=actor,
            action="recipe.new_version",
            obj=recipe,
            message=f"from v{base.version}",
            diff=recipe_diff(base, recipe),
        )
    return recipe


def recipe_diff(a: DataMixRecipe, b: DataMixRecipe) -> dict[str, list]:
    wa, wb = a.weights(), b.weights()
    diff = {f"weights.{s}": [wa.get(s), wb.get(s)] for s in sorted(set(wa) | set(wb)) if wa.get(s) != wb.get(s)}
    diff.update({f"prep.{k}": v for k, v in config_diff(recipe_settings(a), recipe_settings(b)).items()})
    return diff
