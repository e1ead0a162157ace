"""Data-mix recipes: a version is never changed; editing writes the next version."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import transaction
from django.db.models import Max

from runs.models import DataMixRecipe, DataSource, RecipeEntry
from runs.services.audit import audit_record


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


def _write_version(*, actor: Any, name: str, version: int, notes: str, weights: dict[str, Decimal]) -> DataMixRecipe:
    recipe = DataMixRecipe.objects.create(name=name, version=version, notes=notes, created_by=actor)
    sources = {s.name: s for s in DataSource.objects.filter(name__in=weights)}
    RecipeEntry.objects.bulk_create(
        RecipeEntry(recipe=recipe, source=sources[src], weight=w) for src, w in weights.items()
    )
    return recipe


def recipe_create(*, actor: Any, name: str, weights: dict[str, Any], notes: str = "") -> DataMixRecipe:
    clean = _clean_weights(weights)
    with transaction.atomic():
        if DataMixRecipe.objects.filter(name=name).exists():
            raise RecipeInvalid(
                {"name": f"A recipe named {name!r} exists; edit it to make a new version, or pick another name."}
            )
        recipe = _write_version(actor=actor, name=name, version=1, notes=notes, weights=clean)
        audit_record(
            actor=actor,
            action="recipe.create",
            obj=recipe,
            diff={f"weights.{k}": [None, float(v)] for k, v in clean.items()},
        )
    return recipe


def recipe_new_version(*, actor: Any, base: DataMixRecipe, weights: dict[str, Any], notes: str = "") -> DataMixRecipe:
    clean = _clean_weights(weights)
    with transaction.atomic():
        latest = DataMixRecipe.objects.select_for_update().filter(name=base.name).aggregate(v=Max("version"))["v"]
        before = base.weights()
        if {k: float(v) for k, v in clean.items()} == before:
            raise RecipeInvalid(
                {"__all__": "Nothing changed: the weights equal this version's; change a weight to make a new version."}
            )
        recipe = _write_version(actor=actor, name=base.name, version=(latest or 0) + 1, notes=notes, weights=clean)
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
    return {f"weights.{s}": [wa.get(s), wb.get(s)] for s in sorted(set(wa) | set(wb)) if wa.get(s) != wb.get(s)}
