from runs.forms.recipe_form import RecipeForm
from runs.forms.run_form import RunForm

__all__ = ["RecipeForm", "RunForm"]
