from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models


class SourceFormat(models.TextChoices):
    JSONL = "jsonl", "JSON lines (one object a line, with a text field)"
    TEXT = "text", "Plain text (one document a line)"
    PARQUET = "parquet", "Parquet (a text column)"


class DataSource(models.Model):
    """Raw text a prep job reads (path, format, language tag), counted on registration by a job."""

    name = models.SlugField(max_length=64, unique=True)
    language = models.CharField(max_length=32, blank=True)
    description = models.CharField(max_length=300, blank=True)
    shards_dir = models.CharField(max_length=500, blank=True, help_text="Empty: the sample shards that ship.")
    path = models.CharField(max_length=1000, blank=True, help_text="File, folder or glob of the raw text.")
    format = models.CharField(max_length=16, choices=SourceFormat.choices, default=SourceFormat.JSONL)
    text_field = models.CharField(max_length=64, default="text")
    licence = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    # The counting job (jobs.data.prep count): its phase (a JobPhase, blank before the first count), folder,
    # backend job, live progress and result.
    count_status = models.CharField(max_length=16, blank=True, db_index=True)
    count_dir = models.CharField(max_length=500, blank=True)
    count_cluster = models.ForeignKey(
        "runs.Cluster", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    count_backend = models.CharField(max_length=16, blank=True)
    count_job_id = models.CharField(max_length=100, blank=True)
    count_progress = models.JSONField(default=dict, blank=True)
    counts = models.JSONField(default=dict, blank=True)
    count_error = models.TextField(blank=True)
    counted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class DataMixRecipe(models.Model):
    """One version of a named recipe. Versions are never edited: an edit writes the next version."""

    name = models.SlugField(max_length=64)
    version = models.PositiveIntegerField()
    notes = models.CharField(max_length=300, blank=True)
    prep_settings = models.JSONField(
        default=dict, blank=True, help_text="Data preparation settings (jobs.data.prep.settings); {} = defaults."
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name", "-version"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="recipe_name_version_unique")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def in_use(self) -> bool:
        return self.runs.exists()

    def weights(self) -> dict[str, float]:
        return {e.source.name: float(e.weight) for e in self.entries.select_related("source").order_by("source__name")}

    def spec(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "sources": [
                {"name": e.source.name, "weight": float(e.weight), "shards_dir": e.source.shards_dir or None}
                for e in self.entries.select_related("source").order_by("-weight", "source__name")
            ],
        }


class RecipeEntry(models.Model):
    recipe = models.ForeignKey(DataMixRecipe, on_delete=models.CASCADE, related_name="entries")
    source = models.ForeignKey(DataSource, on_delete=models.PROTECT, related_name="+")
    weight = models.DecimalField(
        max_digits=6, decimal_places=2, validators=[MinValueValidator(Decimal("0.01")), MaxValueValidator(100)]
    )

    class Meta:
        constraints = [models.UniqueConstraint(fields=["recipe", "source"], name="recipe_entry_source_unique")]

    def __str__(self) -> str:
        return f"{self.source_id}: {self.weight} %"
