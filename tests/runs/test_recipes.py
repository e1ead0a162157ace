import pytest

from runs.models import AuditEvent, DataMixRecipe
from runs.services.recipes import RecipeInvalid, recipe_create, recipe_diff, recipe_new_version
from tests.runs.factories import tiny_run

pytestmark = pytest.mark.django_db


def test_the_guides_mix_is_seeded_as_version_one(seeded):
    recipe = DataMixRecipe.objects.get(name="bilingual-demo")
    assert recipe.version == 1
    assert recipe.weights() == {"en": 35.0, "other": 20.0, "zh": 45.0}


def test_weights_must_sum_to_one_hundred(seeded, operator):
    with pytest.raises(RecipeInvalid) as err:
        recipe_create(actor=operator, name="bad-mix", weights={"zh": 50, "en": 30, "other": 10})
    assert "sum to 90.00 %" in err.value.errors["__all__"]
    assert "adjust by 10.00" in err.value.errors["__all__"]
    assert not DataMixRecipe.objects.filter(name="bad-mix").exists()


def test_an_unknown_source_is_named(seeded, operator):
    with pytest.raises(RecipeInvalid) as err:
        recipe_create(actor=operator, name="mix", weights={"zh": 50, "klingon": 50})
    assert "klingon" in err.value.errors["klingon"]


def test_out_of_range_weight_is_refused(seeded, operator):
    with pytest.raises(RecipeInvalid) as err:
        recipe_create(actor=operator, name="mix", weights={"zh": 150, "en": -50})
    assert "between 0.01 and 100" in err.value.errors["zh"]


def test_editing_writes_a_new_version_and_leaves_the_old_one_alone(seeded, operator):
    v1 = DataMixRecipe.objects.get(name="bilingual-demo", version=1)
    run = tiny_run(owner=operator)
    v2 = recipe_new_version(actor=operator, base=v1, weights={"zh": 50, "en": 30, "other": 20})
    assert v2.version == 2 and v2.name == v1.name
    v1.refresh_from_db()
    assert v1.weights() == {"en": 35.0, "other": 20.0, "zh": 45.0}
    run.refresh_from_db()
    assert run.recipe_id == v1.pk and run.config["data"]["recipe"]["version"] == 1
    assert recipe_diff(v1, v2) == {"weights.en": [35.0, 30.0], "weights.zh": [45.0, 50.0]}
    event = AuditEvent.objects.get(action="recipe.new_version")
    assert event.diff == {"weights.en": [35.0, 30.0], "weights.zh": [45.0, 50.0]}


def test_a_version_that_changes_nothing_is_refused(seeded, operator):
    v1 = DataMixRecipe.objects.get(name="bilingual-demo", version=1)
    with pytest.raises(RecipeInvalid, match="Nothing changed"):
        recipe_new_version(actor=operator, base=v1, weights={"zh": 45, "en": 35, "other": 20})


def test_versions_keep_counting_from_the_newest(seeded, operator):
    v1 = DataMixRecipe.objects.get(name="bilingual-demo", version=1)
    recipe_new_version(actor=operator, base=v1, weights={"zh": 50, "en": 30, "other": 20})
    v3 = recipe_new_version(actor=operator, base=v1, weights={"zh": 40, "en": 40, "other": 20})
    assert v3.version == 3


def test_duplicate_name_is_refused_with_the_fix(seeded, operator):
    with pytest.raises(RecipeInvalid) as err:
        recipe_create(actor=operator, name="bilingual-demo", weights={"zh": 100})
    assert "make a new version" in err.value.errors["name"]
