"""Checks of a run config (docs/run-config.md) that name the field and the fix: `validate_config`, and the checks
of its data recipe, alerts and remediation policy.

Every issue is reported, not just the first; the checks of each part live beside this module (layout_checks,
schedule_checks, capabilities) and field names are those of fields.py.
"""

from __future__ import annotations

from typing import Any

from jobs.common.run_config import ConfigError, parse_own_script, parse_run_config
from runs.planning.capabilities import check_trainer_can_run
from runs.planning.fields import (
    MISSING,
    OOM_REMEDIES,
    PRECISIONS,
    SPIKE_ACTIONS,
    TRAINERS,
    ConfigReader,
    FieldIssue,
)
from runs.planning.layout_checks import check_cluster, check_model, check_parallel
from runs.planning.schedule_checks import check_batch, check_curriculum, check_optimizer, check_training

# The tokenizer that ships in jobs/assets/, used when data.tokenizer is null.
BUNDLED_TOKENIZER_VOCAB = 4096
RECIPE_SUM_TOLERANCE = 0.01


def validate_config(
    cfg: dict[str, Any], *, capabilities: dict[str, Any] | None = None, trainer: str = "reference"
) -> list[FieldIssue]:
    """Every problem with `cfg` for `trainer`; [] when it can be launched (or planned, for plan_only).

    For the reference trainer the layout is checked against `capabilities`, read from jobs/train/capabilities.json when
    not given; plan_only and own_script skip that check, as neither runs the reference trainer.
    """
    r = ConfigReader(cfg)
    if not isinstance(cfg, dict):
        return [FieldIssue("config", f"A run config is a JSON object, not {type(cfg).__name__}; start from a preset.")]
    if trainer not in TRAINERS:
        r.add("run.trainer", f"run.trainer {trainer!r} is unknown; choose one of {', '.join(TRAINERS)}.")
    if "schema_version" in cfg and cfg["schema_version"] != 1:
        r.add(
            "schema_version",
            f"schema_version is {cfg['schema_version']!r}; this control plane writes and reads "
            "version 1, so set it to 1.",
            {"schema_version": 1},
        )

    model = check_model(r)
    cluster = check_cluster(r)
    par = check_parallel(r, model=model, cluster=cluster)
    batch = check_batch(r, model=model, par=par)
    training = check_training(r, batch=batch)
    check_optimizer(r, training=training)
    r.choice("precision", PRECISIONS)
    check_curriculum(r, model=model, batch=batch, training=training)
    _check_data(r, model=model, trainer=trainer)
    _check_alerts_and_remediation(r)
    _check_own_script(r)
    if trainer == "reference":
        check_trainer_can_run(r, capabilities=capabilities)
        _check_with_job_loader(r)
    return r.issues


def job_field(name: str) -> str:
    """The control plane's name of a field the job's loader names: "curriculum[1].seq_len" -> "curriculum.1.seq_len"."""
    return "config" if name == "run.json" else name.replace("[", ".").replace("]", "")


def _check_with_job_loader(r: ConfigReader) -> None:
    """The job's own loader (jobs.common.run_config) over the config, so that the form, the API and the job cannot
    disagree: whatever it refuses is an issue here too, under the same field. The checks above give the fuller
    messages (and every issue at once); this adds what only the loader knows, e.g. a rule added to the schema."""
    try:
        parse_run_config(r.cfg)
    except ConfigError as exc:
        field = job_field(exc.field)
        if not any(issue.field == field for issue in r.issues):
            r.add(field, f"{field}: {exc.message}; correct it as docs/run-config.md describes.")


# --- data, alerts, remediation -----------------------------------------------------------------------------------


def _check_data(r: ConfigReader, *, model: dict[str, Any], trainer: str) -> None:
    r.optional_text("data.shards_dir")
    r.optional_text("data.tokenizer")
    recipe = r.raw("data.recipe")
    if recipe is MISSING:
        return
    if not isinstance(recipe, dict):
        r.add("data.recipe", "data.recipe must be an object {name, version, sources}; pick a data-mix recipe.")
        return
    name = recipe.get("name")
    if not isinstance(name, str) or not name.strip():
        r.add("data.recipe.name", "data.recipe.name is empty; pick a named data-mix recipe.")
    r.integer("data.recipe.version")
    sources = r.raw("data.recipe.sources")
    if sources is MISSING:
        return
    if not isinstance(sources, list) or not sources:
        r.add("data.recipe.sources", "data.recipe.sources is empty; add at least one source with a weight.")
        return
    total, weights_ok, seen = 0.0, True, set()
    for i, source in enumerate(sources):
        if not isinstance(source, dict):
            r.add(
                f"data.recipe.sources.{i}",
                f"data.recipe.sources.{i} must be an object {{name, weight}}, not {source!r}; fix that entry.",
            )
            weights_ok = False
            continue
        src_name = source.get("name")
        if not isinstance(src_name, str) or not src_name.strip():
            r.add(f"data.recipe.sources.{i}.name", f"data.recipe.sources.{i}.name is empty; name the data source.")
        elif src_name in seen:
            r.add(
                f"data.recipe.sources.{i}.name",
                f"data.recipe.sources.{i}.name {src_name!r} appears twice in the recipe; merge the two entries "
                "into one weight.",
            )
        else:
            seen.add(src_name)
        weight = r.number(f"data.recipe.sources.{i}.weight")
        if weight is None:
            weights_ok = False
        else:
            total += weight
    if weights_ok and abs(total - 100.0) > RECIPE_SUM_TOLERANCE:
        r.add(
            "data.recipe.sources",
            f"The weights in data.recipe.sources add up to {total:g} %, not 100 %; adjust them so that they "
            "sum to 100 (each between 0 and 100).",
        )
    vocab = model.get("vocab_size")
    if trainer == "reference" and vocab is not None and vocab < BUNDLED_TOKENIZER_VOCAB:
        tokenizer = r.cfg.get("data", {}).get("tokenizer") if isinstance(r.cfg.get("data"), dict) else None
        if tokenizer is None:
            r.add(
                "model.vocab_size",
                f"model.vocab_size is {vocab:,} but the bundled tokenizer (data.tokenizer "
                f"null) produces ids up to {BUNDLED_TOKENIZER_VOCAB:,}; set vocab_size to at "
                f"least {BUNDLED_TOKENIZER_VOCAB:,} or point data.tokenizer at your own.",
                {"model.vocab_size": BUNDLED_TOKENIZER_VOCAB},
            )


def _check_own_script(r: ConfigReader) -> None:
    """The own_script section, by the schema's own parser (jobs.common.run_config), which names the field."""
    try:
        parse_own_script(r.cfg)
    except ConfigError as exc:
        r.add(exc.field, f"{exc}; see docs/run-config.md (own_script).")


def _check_alerts_and_remediation(r: ConfigReader) -> None:
    for name in ("loss_spike_z", "grad_norm_max", "hang_timeout_s", "throughput_drop_pct"):
        r.number(f"alerts.{name}")
    r.integer("remediation.max_attempts")
    r.choice("remediation.on_spike", SPIKE_ACTIONS)
    oom = r.raw("remediation.oom")
    if oom is MISSING:
        return
    if not isinstance(oom, list):
        r.add("remediation.oom", f"remediation.oom must be an ordered list drawn from {', '.join(OOM_REMEDIES)}.")
        return
    unknown = [step for step in oom if step not in OOM_REMEDIES]
    if unknown:
        r.add(
            "remediation.oom",
            f"remediation.oom has unknown steps {unknown!r}; use only {', '.join(OOM_REMEDIES)}.",
            {"remediation.oom": [s for s in oom if s not in unknown]},
        )
    elif len(set(oom)) != len(oom):
        r.add(
            "remediation.oom",
            "remediation.oom lists a step twice; each remedy is tried once, so remove the repeat.",
            {"remediation.oom": list(dict.fromkeys(oom))},
        )
