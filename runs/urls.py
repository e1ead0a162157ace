from django.urls import include, path
from django.views.generic import RedirectView

from runs.views import audit, recipes, runs, serving, tokens

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
    path("runs/<int:pk>/checkpoints/", serving.checkpoint_list, name="run-checkpoints"),
    path("runs/<int:pk>/checkpoints/retention/", serving.checkpoint_retention, name="run-retention"),
    path(
        "runs/<int:pk>/checkpoints/<int:checkpoint_id>/resume/",
        serving.checkpoint_resume_view,
        name="checkpoint-resume",
    ),
    path(
        "runs/<int:pk>/checkpoints/<int:checkpoint_id>/quantize/",
        serving.checkpoint_quantize,
        name="checkpoint-quantize",
    ),
    path("artifacts/<int:artifact_id>/benchmark/", serving.artifact_benchmark, name="artifact-benchmark"),
    path("artifacts/<int:artifact_id>/deploy/", serving.artifact_deploy, name="artifact-deploy"),
    path("deployments/", serving.deployment_list, name="deployment-list"),
    path("deployments/<int:pk>/", serving.deployment_detail, name="deployment-detail"),
    path("deployments/<int:pk>/stop/", serving.deployment_stop_view, name="deployment-stop"),
    path("recipes/", recipes.recipe_list, name="recipe-list"),
    path("recipes/new/", recipes.recipe_new, name="recipe-new"),
    path("recipes/<int:pk>/", recipes.recipe_detail, name="recipe-detail"),
    path("recipes/<int:pk>/edit/", recipes.recipe_edit, name="recipe-edit"),
    path("audit/", audit.audit_list, name="audit-list"),
    path("account/tokens/", tokens.token_list, name="token-list"),
    path("account/tokens/<int:pk>/revoke/", tokens.token_revoke, name="token-revoke"),
    path("", include("runs.urls_api")),
]
