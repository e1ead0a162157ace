from __future__ import annotations

from typing import Any

from django import forms

from runs.forms.data_forms import add_setting_fields, setting_fields, settings_from
from runs.models import DataSource


class RecipeForm(forms.Form):
    """Name and notes, plus one weight field per data source (weights in percent, summing to 100)."""

    name = forms.SlugField(max_length=64, help_text="Letters, digits, - and _; versions share the name.")
    notes = forms.CharField(max_length=300, required=False)

    def __init__(
        self,
        *args: Any,
        fixed_name: str | None = None,
        weights: dict[str, float] | None = None,
        settings: dict | None = None,
        notes: str = "",
        **kw: Any,
    ):
        """`settings` (a version's complete preparation settings) adds their fields, starting from them; `notes`
        (the version edited) are kept unless changed."""
        super().__init__(*args, **kw)
        self.base_settings = settings
        self.initial.setdefault("notes", notes)
        self.sources = list(DataSource.objects.order_by("name"))
        for source in self.sources:
            self.fields[f"w_{source.name}"] = forms.DecimalField(
                required=False,
                min_value=0,
                max_value=100,
                decimal_places=2,
                label=f"{source.name}" + (f" ({source.language})" if source.language else ""),
                help_text=source.description,
            )
            if weights and source.name in weights:
                self.initial[f"w_{source.name}"] = weights[source.name]
        if fixed_name:
            self.fields["name"].disabled = True
            self.initial["name"] = fixed_name
        if settings is not None:
            add_setting_fields(self, settings)

    def setting_fields(self) -> list:
        return setting_fields(self) if self.base_settings is not None else []

    def prep_settings(self) -> dict | None:
        """The preparation settings the form describes (None when it has no settings fields)."""
        return settings_from(self, self.base_settings) if self.base_settings is not None else None

    def weight_fields(self) -> list:
        return [self[f"w_{s.name}"] for s in self.sources]

    def weights(self) -> dict[str, Any]:
        return {s.name: self.cleaned_data.get(f"w_{s.name}") for s in self.sources}
