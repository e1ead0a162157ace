from django.urls import include, path
from django.views.generic import RedirectView

from runs.views import audit, recipes, runs

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="run-list"), name="home"),
    path("runs/", runs.run_list, name="run-list"),
    path("runs/new/", runs.run_new, name="run-new"),
    path("runs/plan/", runs.run_plan, name="run-plan"),
    path("runs/compare/", runs.run_compare, name="run-compare"),
    path("runs/<int:pk>/", runs.run_detail, name="run-detail"),
    path("runs/<int:pk>/edit/", runs.run_edit, name="run-edit"),
    path("runs/<int:pk>/state/", runs.run_state, name="run-state"),
    path("runs/<int:pk>/launch/", runs.run_launch_view, name="run-launch"),
    path("runs/<int:pk>/cancel/", runs.run_cancel_view, name="run-cancel"),
    path("recipes/", recipes.recipe_list, name="recipe-list"),
    path("recipes/new/", recipes.recipe_new, name="recipe-new"),
    path("recipes/<int:pk>/", recipes.recipe_detail, name="recipe-detail"),
    path("recipes/<int:pk>/edit/", recipes.recipe_edit, name="recipe-edit"),
    path("audit/", audit.audit_list, name="audit-list"),
    path("", include("runs.urls_api")),
]
