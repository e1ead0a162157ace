from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET

from jobs.data.prep import settings as prep_settings
from runs.forms import RecipeForm
from runs.forms.data_forms import PrepForm, setting_field
from runs.models import DataMixRecipe
from runs.services.data_prep import latest_prep
from runs.services.recipes import RecipeInvalid, recipe_create, recipe_diff, recipe_new_version, recipe_settings


def _apply_errors(form: RecipeForm, exc: RecipeInvalid) -> None:
    for key, message in exc.errors.items():
        if key.startswith("prep."):
            field = setting_field(key)
            field = field if field in form.fields else None
        else:
            field = "name" if key == "name" else (f"w_{key}" if f"w_{key}" in form.fields else None)
        form.add_error(field, message)


@require_GET
@permission_required("runs.view_datamixrecipe", raise_exception=True)
def recipe_list(request: HttpRequest) -> HttpResponse:
    recipes = DataMixRecipe.objects.prefetch_related("entries__source").order_by("name", "-version")
    return render(request, "recipes/list.html", {"recipes": recipes})


@require_GET
@permission_required("runs.view_datamixrecipe", raise_exception=True)
def recipe_detail(request: HttpRequest, pk: int) -> HttpResponse:
    recipe = get_object_or_404(DataMixRecipe, pk=pk)
    versions = list(DataMixRecipe.objects.filter(name=recipe.name).order_by("-version"))
    other = None
    against = request.GET.get("against")
    if against and against.isdigit():
        other = DataMixRecipe.objects.filter(name=recipe.name, version=int(against)).first()
    elif recipe.version > 1:
        other = DataMixRecipe.objects.filter(name=recipe.name, version__lt=recipe.version).order_by("-version").first()
    diff = recipe_diff(other, recipe) if other else None
    can_prepare = request.user.has_perm("runs.add_preprun")
    return render(
        request,
        "recipes/detail.html",
        {
            "recipe": recipe,
            "versions": versions,
            "other": other,
            "diff": diff,
            "entries": recipe.entries.select_related("source").order_by("-weight"),
            "runs": recipe.runs.order_by("-id")[:20],
            "settings": recipe_settings(recipe),
            "levels": prep_settings.QUALITY_LEVELS,
            "preps": recipe.prep_runs.select_related("cluster", "created_by").order_by("-id")[:10],
            "prepared": latest_prep(recipe),
            "prep_form": PrepForm() if can_prepare else None,
        },
    )


@permission_required("runs.add_datamixrecipe", raise_exception=True)
def recipe_new(request: HttpRequest) -> HttpResponse:
    form = RecipeForm(request.POST or None, settings=prep_settings.validate({}))
    if request.method == "POST" and form.is_valid():
        try:
            recipe = recipe_create(
                actor=request.user,
                name=form.cleaned_data["name"],
                weights=form.weights(),
                notes=form.cleaned_data["notes"],
                settings=form.prep_settings(),
            )
        except RecipeInvalid as exc:
            _apply_errors(form, exc)
        else:
            messages.success(request, f"Recipe {recipe} created.")
            return redirect("recipe-detail", pk=recipe.pk)
    return render(request, "recipes/form.html", {"form": form, "base": None})


@permission_required("runs.add_datamixrecipe", raise_exception=True)
def recipe_edit(request: HttpRequest, pk: int) -> HttpResponse:
    base = get_object_or_404(DataMixRecipe, pk=pk)
    form = RecipeForm(
        request.POST or None,
        fixed_name=base.name,
        weights=base.weights(),
        settings=recipe_settings(base),
        notes=base.notes,
    )
    if request.method == "POST" and form.is_valid():
        try:
            recipe = recipe_new_version(
                actor=request.user,
                base=base,
                weights=form.weights(),
                notes=form.cleaned_data["notes"],
                settings=form.prep_settings(),
            )
        except RecipeInvalid as exc:
            _apply_errors(form, exc)
        else:
            messages.success(request, f"Saved as {recipe}; v{base.version} is unchanged.")
            return redirect("recipe-detail", pk=recipe.pk)
    return render(request, "recipes/form.html", {"form": form, "base": base})
