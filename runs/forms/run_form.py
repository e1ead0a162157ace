"""The run form: preset defaults, every config field, and errors that name the field and the fix."""

from __future__ import annotations

import copy
import re
from typing import Any

from django import forms

from runs.forms.run_fields import ALL_FIELDS, BY_PATH, GROUPS
from runs.models import Cluster, DataMixRecipe, Trainer
from runs.planning.presets import PRESETS, preset_config
from runs.services.diff import flatten
from runs.services.runs import Checked, run_check
from runs.services.seed import PRESET_CLUSTERS

_CURRICULUM = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def format_curriculum(stages: list[dict]) -> str:
    return ", ".join(f"{s['start_step']}:{s['seq_len']}" for s in stages)


def parse_curriculum(text: str) -> list[dict]:
    stages = []
    for part in [p for p in text.replace(";", ",").split(",") if p.strip()]:
        match = _CURRICULUM.match(part)
        if not match:
            raise forms.ValidationError(
                f"{part.strip()!r} is not a stage; write stages as start_step:seq_len separated by commas, "
                "e.g. 0:256, 1000:2048, 5000:8192."
            )
        stages.append({"start_step": int(match.group(1)), "seq_len": int(match.group(2))})
    if not stages:
        raise forms.ValidationError("Give at least one stage, e.g. 0:2048.")
    return stages


def _set_path(cfg: dict, path: str, value: Any) -> None:
    node = cfg
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value


def _field_for_issue(path: str, fields: dict) -> str | None:
    """Map a dotted config path from the validator to the form field that shows it."""
    if path.replace(".", "__") in fields:
        return path.replace(".", "__")
    if path.startswith("curriculum"):
        return "curriculum"
    if path.startswith("cluster"):
        return "cluster"
    if path.startswith("data.recipe"):
        return "recipe"
    if path in fields:
        return path
    if "." in path and path.replace(".", "__").rsplit("__", 1)[0] in fields:
        return path.replace(".", "__").rsplit("__", 1)[0]
    return None


class RunForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="A short name people will recognise in the run list.")
    preset = forms.ChoiceField(choices=[(k, p.label) for k, p in PRESETS.items()])
    trainer = forms.ChoiceField(choices=Trainer.choices)
    script_path = forms.CharField(
        required=False,
        max_length=500,
        label="Script path",
        help_text="Only for 'my own DeepSpeed script': absolute path of the .py file on the cluster.",
    )
    cluster = forms.ModelChoiceField(queryset=Cluster.objects.all(), empty_label=None)
    recipe = forms.ModelChoiceField(queryset=DataMixRecipe.objects.all(), empty_label=None, label="Data-mix recipe")
    curriculum = forms.CharField(
        max_length=500,
        label="Sequence-length curriculum",
        help_text="start_step:seq_len stages, e.g. 0:256, 1000:2048, 5000:8192; the last length is the batch's.",
    )

    fit_override_reason = forms.CharField(
        required=False,
        max_length=300,
        label="Launch although the plan does not fit, because",
        help_text="Only when the plan says the run does not fit: why it should run anyway (recorded in the audit).",
    )

    def __init__(self, *args: Any, preset: str = "tiny", base_config: dict | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        for cf in ALL_FIELDS:
            self.fields[cf.name] = cf.build()
        self.checked: Checked | None = None
        if not self.is_bound:
            preset_name = preset if preset in PRESETS else "tiny"
            cfg = base_config if base_config is not None else preset_config(preset_name)
            self.base_config = copy.deepcopy(cfg)
            self.initial.setdefault("preset", preset_name)
            self.initial.setdefault("trainer", PRESETS[preset_name].trainer)
            flat = flatten(cfg)
            for cf in ALL_FIELDS:
                if cf.path in flat:
                    self.initial.setdefault(cf.name, flat[cf.path])
            self.initial.setdefault("curriculum", format_curriculum(cfg.get("curriculum", [])))
            default_cluster = PRESET_CLUSTERS.get(preset_name)
            if default_cluster:
                cluster = Cluster.objects.filter(name=default_cluster).first()
                if cluster:
                    self.initial.setdefault("cluster", cluster.pk)
            latest = DataMixRecipe.objects.order_by("name", "-version").first()
            if latest:
                self.initial.setdefault("recipe", latest.pk)

    def head_fields(self) -> list:
        return [self[n] for n in ("name", "trainer", "cluster", "recipe", "script_path", "curriculum")]

    def groups(self) -> list[tuple[str, list]]:
        return [(title, [self[cf.name] for cf in fields]) for title, fields in GROUPS]

    def clean_curriculum(self) -> list[dict]:
        return parse_curriculum(self.cleaned_data["curriculum"])

    def config(self) -> dict:
        """The config the submitted fields describe: the preset's config with each field laid over it."""
        data = self.cleaned_data
        cfg = preset_config(data.get("preset") or "tiny")
        own_script = data.get("trainer") == Trainer.OWN_SCRIPT
        for cf in ALL_FIELDS:
            if cf.path.startswith("own_script.") and not own_script:
                continue  # only a run of the user's script has (and diffs) this section
            if cf.name in data and data[cf.name] is not None:
                _set_path(cfg, cf.path, data[cf.name])
        if isinstance(data.get("curriculum"), list):
            cfg["curriculum"] = data["curriculum"]
        return cfg

    def clean(self) -> dict:
        data = super().clean() or {}
        # The name does not change the plan; any other broken field would make the plan describe the preset instead.
        if set(self.errors) - {"name"} or not data.get("cluster") or not data.get("recipe"):
            return data
        self.checked = run_check(
            base=self.config(),
            cluster=data["cluster"],
            recipe=data["recipe"],
            trainer=data["trainer"],
            script_path=data.get("script_path", ""),
            preset=data.get("preset"),
            fit_override_reason=data.get("fit_override_reason", ""),
        )
        for issue in self.checked.issues:
            target = _field_for_issue(issue.field, self.fields)
            if target is None or target == "__all__":
                label = BY_PATH[issue.field].label if issue.field in BY_PATH else issue.field
                self.add_error(None, issue.message if issue.field == "__all__" else f"{label}: {issue.message}")
            elif target in self.errors and issue.message in self.errors[target]:
                continue
            else:
                self.add_error(target, issue.message)
        return data

    def issue_suggestions(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for issue in self.checked.issues if self.checked else []:
            for path, value in (getattr(issue, "suggestion", None) or {}).items():
                out[path.replace(".", "__")] = value
        return out
