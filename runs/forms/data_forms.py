"""Forms of the data pages: register a source, start a prep run, and a recipe's preparation settings."""

from __future__ import annotations

from typing import Any

from django import forms

from jobs.data.prep import settings as prep_settings
from runs.models import Cluster, SourceFormat

LANGUAGE_CHOICES = [
    ("zh", "zh: Chinese"),
    ("en", "en: English"),
    ("fr", "fr: French"),
    ("de", "de: German"),
    ("es", "es: Spanish"),
    ("it", "it: Italian"),
    ("ru", "ru: Russian"),
    ("other", "other: neither Chinese nor English"),
    ("mul", "mul: several, not checked"),
]


def _clusters() -> Any:
    return Cluster.objects.filter(runnable=True).order_by("name")


class SourceForm(forms.Form):
    name = forms.SlugField(max_length=64, help_text="Names the source in recipes and its folder of shards.")
    language = forms.ChoiceField(choices=LANGUAGE_CHOICES, help_text="Documents in another language are removed.")
    format = forms.ChoiceField(choices=SourceFormat.choices)
    path = forms.CharField(
        max_length=1000, help_text="Absolute file, folder or glob (/data/zh/*.jsonl), or s3://... where configured."
    )
    text_field = forms.CharField(max_length=64, initial="text", required=False, help_text="JSONL field or column.")
    licence = forms.CharField(max_length=300, required=False, help_text="Where the text comes from and its terms.")
    description = forms.CharField(max_length=300, required=False)
    cluster = forms.ModelChoiceField(queryset=Cluster.objects.none(), help_text="Where the counting job runs.")

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.fields["cluster"].queryset = _clusters()  # type: ignore[attr-defined]
        self.fields["cluster"].initial = _clusters().filter(backend="local").first()


class CountForm(forms.Form):
    cluster = forms.ModelChoiceField(queryset=Cluster.objects.none(), help_text="Where the counting job runs.")

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.fields["cluster"].queryset = _clusters()  # type: ignore[attr-defined]
        self.fields["cluster"].initial = _clusters().filter(backend="local").first()


class PrepForm(forms.Form):
    cluster = forms.ModelChoiceField(queryset=Cluster.objects.none(), help_text="Local processes or Slurm.")
    tasks = forms.IntegerField(min_value=1, max_value=256, initial=2, help_text="Parallel tasks per stage.")

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.fields["cluster"].queryset = _clusters()  # type: ignore[attr-defined]
        self.fields["cluster"].initial = _clusters().filter(backend="local").first()


# Form field -> settings path, for the recipe form's preparation section.
SETTING_FIELDS = {
    "p_language_check": "language.check",
    "p_min_confidence": "language.min_confidence",
    "p_near": "dedup.near",
    "p_simhash_max_distance": "dedup.simhash.max_distance",
    "p_minhash_ngrams": "dedup.minhash.ngrams",
    "p_minhash_buckets": "dedup.minhash.buckets",
    "p_minhash_hashes": "dedup.minhash.hashes_per_bucket",
    "p_quality_rules": "quality.rules",
    "p_min_level": "quality.min_level",
    "p_quality_model": "quality.model",
    "p_toxicity_words": "toxicity.word_lists",
    "p_max_toxicity": "toxicity.max_score",
    "p_toxicity_model": "toxicity.model",
    "p_tokenizer_mode": "tokenizer.mode",
    "p_vocab_size": "tokenizer.vocab_size",
    "p_tokenizer_path": "tokenizer.path",
    "p_mix_mode": "mix.mode",
}
_LEVELS = [(n, f"{n}: {text}") for n, text in prep_settings.QUALITY_LEVELS.items()]


def _get(settings: dict, path: str) -> Any:
    node: Any = settings
    for part in path.split("."):
        node = node[part]
    return node


def _set(settings: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = settings
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def add_setting_fields(form: forms.Form, current: dict) -> None:
    """The preparation settings as fields of `form`, starting from `current` (complete settings)."""
    f = form.fields
    f["p_language_check"] = forms.BooleanField(required=False, label="Check each document's language")
    f["p_min_confidence"] = forms.FloatField(min_value=0, max_value=1, label="Language: least confidence")
    f["p_near"] = forms.ChoiceField(
        choices=[("simhash", "SimHash"), ("minhash", "MinHash (datatrove)"), ("none", "None")],
        label="Near duplicates",
    )
    f["p_simhash_max_distance"] = forms.IntegerField(min_value=0, max_value=85, label="SimHash: most differing bits")
    f["p_minhash_ngrams"] = forms.IntegerField(min_value=1, max_value=10, label="MinHash: words per shingle")
    f["p_minhash_buckets"] = forms.IntegerField(min_value=1, max_value=64, label="MinHash: buckets")
    f["p_minhash_hashes"] = forms.IntegerField(min_value=1, max_value=32, label="MinHash: hashes per bucket")
    f["p_quality_rules"] = forms.MultipleChoiceField(
        choices=[(r, r) for r in prep_settings.QUALITY_FAMILIES],
        widget=forms.CheckboxSelectMultiple,
        required=False,
        label="Quality rules",
    )
    f["p_min_level"] = forms.TypedChoiceField(choices=_LEVELS, coerce=int, label="Least quality level kept")
    f["p_quality_model"] = forms.CharField(
        required=False, max_length=500, label="Quality model (.npz)", help_text="Empty: the shipped classifier."
    )
    f["p_toxicity_words"] = forms.BooleanField(required=False, label="Toxicity word lists")
    f["p_max_toxicity"] = forms.FloatField(min_value=0, max_value=1, label="Toxicity: highest score kept")
    f["p_toxicity_model"] = forms.CharField(
        required=False, max_length=500, label="Toxicity model (.npz)", help_text="Empty: the shipped classifier."
    )
    f["p_tokenizer_mode"] = forms.ChoiceField(
        choices=[("train", "Train SentencePiece BPE"), ("reuse", "Reuse a tokenizer")], label="Tokenizer"
    )
    f["p_vocab_size"] = forms.IntegerField(
        min_value=512, max_value=1_000_000, label="Vocabulary", help_text="The guide's 128,000, scaled to the data."
    )
    f["p_tokenizer_path"] = forms.CharField(required=False, max_length=500, label="Tokenizer to reuse (.model)")
    f["p_mix_mode"] = forms.ChoiceField(
        choices=[("trim", "Cut sources to the weights"), ("keep_all", "Keep everything")], label="Mix"
    )
    for name, path in SETTING_FIELDS.items():
        value = _get(current, path)
        form.initial.setdefault(name, "" if value is None else value)


def setting_fields(form: forms.Form) -> list:
    return [form[name] for name in SETTING_FIELDS]


def settings_from(form: forms.Form, base: dict) -> dict:
    """The settings the form's cleaned data describes, over `base`."""
    import copy

    out = copy.deepcopy(base)
    for name, path in SETTING_FIELDS.items():
        value = form.cleaned_data.get(name)
        if name in ("p_tokenizer_path", "p_quality_model", "p_toxicity_model"):
            value = value or None
        _set(out, path, value)
    return out


def setting_field(key: str) -> str | None:
    """The form field of a settings error key ("prep.dedup.near" or "dedup.near")."""
    path = key.removeprefix("prep.")
    for name, field_path in SETTING_FIELDS.items():
        if field_path == path:
            return name
    return None
