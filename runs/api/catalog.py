"""What runs are made of: presets, clusters and data sources (read), data-mix recipes and their versions."""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema, Status
from pydantic import Field

from runs.api.auth import require
from runs.api.errors import Refused
from runs.api.schemas import ClusterOut, DataSourceOut, ErrorOut, PathId, PresetOut, RecipeOut, RecipePage
from runs.api.serialize import cluster_out, recipe_out, source_out
from runs.forms import RecipeForm
from runs.models import Cluster, DataMixRecipe, DataSource
from runs.planning.presets import PRESETS, preset_config
from runs.services.recipes import RecipeInvalid, recipe_create, recipe_new_version
from runs.services.seed import PRESET_CLUSTERS

router = Router(tags=["catalog"])
REFUSED = {400: ErrorOut, 403: ErrorOut, 404: ErrorOut}


@router.get("/presets/", response=list[PresetOut], summary="Run presets and their configs")
def list_presets(request):
    require(request, "runs.view_run", "reading presets")
    return [
        {
            "name": name,
            "label": p.label,
            "description": p.description,
            "trainer": p.trainer,
            "default_cluster": PRESET_CLUSTERS.get(name),
            "config": preset_config(name),
        }
        for name, p in PRESETS.items()
    ]


@router.get("/clusters/", response=list[ClusterOut], summary="Clusters")
def list_clusters(request):
    require(request, "runs.view_cluster", "reading clusters")
    return [cluster_out(c) for c in Cluster.objects.order_by("name")]


@router.get("/clusters/{cluster_id}/", response={200: ClusterOut, **REFUSED}, summary="One cluster")
def get_cluster(request, cluster_id: PathId):
    require(request, "runs.view_cluster", "reading clusters")
    return cluster_out(get_object_or_404(Cluster, pk=cluster_id))


@router.get("/data-sources/", response=list[DataSourceOut], summary="Data sources")
def list_sources(request):
    require(request, "runs.view_datasource", "reading data sources")
    return [source_out(s) for s in DataSource.objects.order_by("name")]


@router.get("/data-sources/{source_id}/", response={200: DataSourceOut, **REFUSED}, summary="One data source")
def get_source(request, source_id: PathId):
    require(request, "runs.view_datasource", "reading data sources")
    return source_out(get_object_or_404(DataSource, pk=source_id))


class RecipeFilters(Schema):
    name: str | None = Field(None, max_length=64, description="Only versions of this recipe.")
    latest: bool = Field(False, description="Only each recipe's newest version.")
    limit: int = Field(100, ge=1, le=500)
    offset: int = Field(0, ge=0, le=10**9)


@router.get("/recipes/", response=RecipePage, summary="Data-mix recipe versions")
def list_recipes(request, filters: Query[RecipeFilters]):
    require(request, "runs.view_datamixrecipe", "reading recipes")
    recipes = DataMixRecipe.objects.select_related("created_by").order_by("name", "-version")
    if filters.name:
        recipes = recipes.filter(name=filters.name)
    if filters.latest:
        newest: dict[str, int] = {}
        for pk, name in recipes.values_list("pk", "name"):
            newest.setdefault(name, pk)
        recipes = recipes.filter(pk__in=newest.values())
    page = recipes[filters.offset : filters.offset + filters.limit]
    return {
        "count": recipes.count(),
        "limit": filters.limit,
        "offset": filters.offset,
        "items": [recipe_out(r) for r in page],
    }


@router.get("/recipes/{recipe_id}/", response={200: RecipeOut, **REFUSED}, summary="One recipe version")
def get_recipe(request, recipe_id: PathId):
    require(request, "runs.view_datamixrecipe", "reading recipes")
    return recipe_out(get_object_or_404(DataMixRecipe, pk=recipe_id))


@router.get("/recipes/{recipe_id}/versions/", response={200: list[RecipeOut], **REFUSED}, summary="All versions")
def recipe_versions(request, recipe_id: PathId):
    require(request, "runs.view_datamixrecipe", "reading recipes")
    recipe = get_object_or_404(DataMixRecipe, pk=recipe_id)
    return [recipe_out(r) for r in DataMixRecipe.objects.filter(name=recipe.name).order_by("-version")]


Weights = dict[str, Any]


class RecipeIn(Schema):
    name: str = Field(description="Letters, digits, - and _; versions share the name.")
    weights: Weights = Field(description="Data source name -> weight in percent; the weights sum to 100.")
    notes: str = ""


class RecipeVersionIn(Schema):
    weights: Weights = Field(description="Data source name -> weight in percent; the weights sum to 100.")
    notes: str = ""


def _form(*, name: str, weights: Weights, notes: str, fixed_name: str | None = None) -> tuple[RecipeForm, Weights]:
    """The recipe page's form, filled from the API's input: its fields check the name, the notes and each known
    source's weight; weights of unknown sources go on to the service, which names them."""
    form = RecipeForm(
        {"name": name, "notes": notes, **{f"w_{k}": v for k, v in weights.items()}}, fixed_name=fixed_name
    )
    known = {s.name for s in form.sources}
    for source, value in weights.items():
        if source in known and (isinstance(value, bool) or not isinstance(value, int | float | str)):
            raise Refused([(f"weights.{source}", f"{value!r} is not a number; give a percentage such as 35.")])
    if not form.is_valid():
        raise Refused([(_recipe_field(k), str(m)) for k, msgs in form.errors.items() for m in msgs])
    return form, {**{k: v for k, v in weights.items() if k not in known}, **form.weights()}


def _recipe_field(key: str) -> str:
    if key.startswith("w_"):
        return f"weights.{key[2:]}"
    return "weights" if key == "__all__" else key


def _refused(exc: RecipeInvalid) -> Refused:
    return Refused(
        [(_recipe_field(k) if k in ("__all__", "name") else f"weights.{k}", m) for k, m in exc.errors.items()]
    )


@router.post("/recipes/", response={201: RecipeOut, **REFUSED}, summary="Create a recipe (version 1)")
def create_recipe(request, payload: RecipeIn):
    require(request, "runs.add_datamixrecipe", "creating recipes")
    form, weights = _form(name=payload.name, weights=payload.weights, notes=payload.notes)
    try:
        recipe = recipe_create(
            actor=request.user, name=form.cleaned_data["name"], weights=weights, notes=form.cleaned_data["notes"]
        )
    except RecipeInvalid as exc:
        raise _refused(exc) from None
    return Status(201, recipe_out(recipe))


@router.post("/recipes/{recipe_id}/versions/", response={201: RecipeOut, **REFUSED}, summary="Save a new version")
def new_recipe_version(request, recipe_id: PathId, payload: RecipeVersionIn):
    """Writes the next version of the recipe; the version given is never changed."""
    require(request, "runs.add_datamixrecipe", "editing recipes")
    base = get_object_or_404(DataMixRecipe, pk=recipe_id)
    form, weights = _form(name=base.name, weights=payload.weights, notes=payload.notes, fixed_name=base.name)
    try:
        recipe = recipe_new_version(actor=request.user, base=base, weights=weights, notes=form.cleaned_data["notes"])
    except RecipeInvalid as exc:
        raise _refused(exc) from None
    return Status(201, recipe_out(recipe))
