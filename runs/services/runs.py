"""Create, edit, launch and cancel runs."""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import transaction

from runs.models import Attempt, AttemptState, Cluster, DataMixRecipe, Run, RunStatus, Trainer
from runs.models.run import ACTIVE_STATUSES
from runs.planning.capabilities import CapabilitiesUnavailable, trainer_capabilities
from runs.planning.fields import FieldIssue
from runs.planning.plan import PlanError
from runs.planning.plan import plan as compute_plan
from runs.planning.validation import validate_config
from runs.realtime.broadcast import RUN_LIST_GROUP, broadcast_on_commit
from runs.services.attempts import attempt_first
from runs.services.audit import audit_record
from runs.services.calibration import assumed_mfu
from runs.services.data_prep import latest_prep
from runs.services.diff import config_diff
from runs.services.enqueue import enqueue_on_commit
from runs.services.scripts import roots_text, script_in_roots
from runs.services.transitions import IllegalTransition, transition


class RunInvalid(Exception):
    def __init__(self, issues: list[FieldIssue]):
        super().__init__("; ".join(f"{i.field}: {i.message}" for i in issues))
        self.issues = issues


class RunActionRefused(Exception):
    """A launch/cancel the run's state or setup does not allow; the message says why and what to do."""


def tokens_per_step(cfg: dict) -> int:
    par, batch, cluster = cfg["parallel"], cfg["batch"], cfg["cluster"]
    world = cluster["nodes"] * cluster["gpus_per_node"]
    dp = max(1, world // max(1, par["tp"] * par["pp"]))
    return int(batch["micro_batch"] * batch["grad_accum"] * dp * batch["seq_len"])


def assemble_config(*, base: dict, cluster: Cluster, recipe: DataMixRecipe, trainer: str) -> dict:
    """The frozen config: the form's choices plus the cluster and recipe they point at, and derived figures."""
    cfg = copy.deepcopy(base)
    cfg["schema_version"] = 1
    cfg["cluster"] = cluster.spec()
    cfg.setdefault("data", {})
    cfg["data"]["recipe"] = recipe.spec()
    cfg["data"].setdefault("shards_dir", None)
    cfg["data"].setdefault("tokenizer", None)
    _prepared_data(cfg["data"], recipe)
    training = cfg.setdefault("training", {})
    try:
        per_step = tokens_per_step(cfg)
        budget = training.get("token_budget")
        if per_step > 0 and budget:
            training["total_steps"] = max(1, math.ceil(budget / per_step))
    except (KeyError, TypeError, ZeroDivisionError):
        pass  # validate_config names the missing or malformed field
    cfg.setdefault("run", {})["trainer"] = trainer
    return cfg


def _prepared_data(data: dict, recipe: DataMixRecipe) -> None:
    """Point data.shards_dir and data.tokenizer at the recipe version's newest successful prep, unless the config
    names data of its own (a path outside the prep folder); with no prep, the bundled sample (null)."""
    managed = [data.get(k) for k in ("shards_dir", "tokenizer")]
    if any(p and not str(p).startswith(str(settings.PREP_DIR)) for p in managed):
        return
    prep = latest_prep(recipe)
    data["shards_dir"] = prep.shards_dir if prep else None
    data["tokenizer"] = prep.tokenizer_path if prep else None


def _prep_vocab_issue(cfg: dict, recipe: DataMixRecipe) -> FieldIssue | None:
    prep = latest_prep(recipe)
    if prep is None or cfg.get("data", {}).get("tokenizer") != prep.tokenizer_path:
        return None
    vocab = (prep.report.get("tokenizer") or {}).get("vocab_size")
    model_vocab = cfg.get("model", {}).get("vocab_size")
    if isinstance(vocab, int) and isinstance(model_vocab, int) and model_vocab < vocab:
        return FieldIssue(
            "model.vocab_size",
            f"model.vocab_size is {model_vocab:,} but the tokenizer prepared for {recipe} (prep #{prep.pk}) has "
            f"{vocab:,} pieces; set vocab_size to at least {vocab:,}.",
            {"model.vocab_size": vocab},
        )
    return None


@dataclass
class Checked:
    config: dict
    issues: list[FieldIssue]
    plan: dict | None


FIT_OVERRIDE_FIELD = "fit_override_reason"


def plan_fits(plan: dict | None) -> bool:
    """Whether a stored or fresh plan says the run fits its devices' memory (no plan: nothing to refuse on)."""
    memory = (plan or {}).get("memory_gib") or {}
    return memory.get("fits") is not False


def fit_issue(plan: dict | None, override_reason: str) -> FieldIssue | None:
    """A plan that does not fit is refused unless someone states why it should run anyway."""
    if plan is None or plan_fits(plan) or override_reason.strip():
        return None
    memory = plan["memory_gib"]
    return FieldIssue(
        FIT_OVERRIDE_FIELD,
        f"The plan needs {memory.get('total')} GiB per device but the cluster has {memory.get('gpu_memory')} GiB, "
        "so the job would run out of memory; apply one of the plan's suggestions to make it fit, or, if you know "
        "the plan overestimates, give the reason to launch it anyway (it is audited).",
    )


def _record_fit_override(*, run: Run, actor: Any, reason: str, at: str) -> None:
    """Keeps who overrode the fit check and why with the run's plan, and audits it."""
    plan = dict(run.plan or {})
    plan["fit_override"] = {"reason": reason.strip(), "by": getattr(actor, "username", str(actor)), "at": at}
    Run.objects.filter(pk=run.pk).update(plan=plan)
    run.plan = plan
    memory = plan.get("memory_gib") or {}
    audit_record(
        actor=actor,
        action="run.fit_override",
        obj=run,
        message=reason.strip(),
        diff={"plan.memory_gib.total": [memory.get("gpu_memory"), memory.get("total")]},
    )


def run_check(
    *,
    base: dict,
    cluster: Cluster,
    recipe: DataMixRecipe,
    trainer: str,
    script_path: str = "",
    preset: str | None = None,
    fit_override_reason: str = "",
) -> Checked:
    """Validate and plan without saving: what the form shows as fields change."""
    cfg = assemble_config(base=base, cluster=cluster, recipe=recipe, trainer=trainer)
    caps = None
    if trainer == Trainer.REFERENCE:
        try:
            caps = trainer_capabilities()
        except CapabilitiesUnavailable as exc:
            return Checked(cfg, [FieldIssue("trainer", str(exc))], None)
    issues = list(validate_config(cfg, capabilities=caps, trainer=trainer))
    vocab_issue = _prep_vocab_issue(cfg, recipe)
    if vocab_issue is not None:
        issues.append(vocab_issue)
    if trainer == Trainer.OWN_SCRIPT:
        if not script_path:
            issues.append(
                FieldIssue(
                    "script_path", "A run of your own script needs its path; enter the absolute path of the .py file."
                )
            )
        elif not os.path.isabs(script_path) or not script_path.endswith(".py"):
            issues.append(
                FieldIssue(
                    "script_path",
                    f"{script_path!r} is not an absolute path to a .py file; give e.g. /home/me/train.py.",
                )
            )
        elif script_in_roots(script_path) is None:
            issues.append(
                FieldIssue(
                    "script_path",
                    f"{script_path!r} is not a .py file inside the script folders ({roots_text()}); copy it into "
                    "one of them, or have an administrator add its folder to CP_SCRIPT_ROOTS.",
                )
            )
    plan_dict: dict | None = None
    try:
        assumed = assumed_mfu(str(cfg.get("cluster", {}).get("gpu_type", "")))
        plan_dict = compute_plan(cfg, mfu=assumed.mfu, preset=preset).to_dict()
        plan_dict["compute"]["mfu_source"] = assumed.source
    except PlanError:
        plan_dict = None  # the validator's issues above already name the fields the plan needs
    too_big = fit_issue(plan_dict, fit_override_reason)
    if too_big is not None:
        issues.append(too_big)
    return Checked(cfg, issues, plan_dict)


def run_create(
    *,
    owner: Any,
    name: str,
    preset: str,
    trainer: str,
    cluster: Cluster,
    recipe: DataMixRecipe,
    config: dict,
    script_path: str = "",
    parent: Run | None = None,
    fit_override_reason: str = "",
) -> Run:
    checked = run_check(
        base=config,
        cluster=cluster,
        recipe=recipe,
        trainer=trainer,
        script_path=script_path,
        preset=preset,
        fit_override_reason=fit_override_reason,
    )
    if checked.issues:
        raise RunInvalid(checked.issues)
    with transaction.atomic():
        run = Run.objects.create(
            name=name,
            owner=owner,
            preset=preset,
            trainer=trainer,
            script_path=script_path,
            config=checked.config,
            plan=checked.plan or {},
            recipe=recipe,
            cluster=cluster,
            parent=parent,
            attempt=1,  # a fork is a new run: its own first attempt (a resume is the same run's next one)
        )
        run.config["run"].update({"id": run.pk, "name": name, "attempt": run.attempt, "preset": preset})
        Run.objects.filter(pk=run.pk).update(config=run.config)
        audit_record(actor=owner, action="run.create", obj=run, diff=config_diff({}, run.config))
        if not plan_fits(run.plan):
            _record_fit_override(run=run, actor=owner, reason=fit_override_reason, at="create")
        broadcast_on_commit(RUN_LIST_GROUP, {"type": "run.created", "run_id": run.pk})
    return run


def run_update(
    *,
    actor: Any,
    run: Run,
    name: str,
    trainer: str,
    cluster: Cluster,
    recipe: DataMixRecipe,
    config: dict,
    script_path: str = "",
    fit_override_reason: str = "",
) -> Run:
    if run.status != RunStatus.DRAFT:
        raise RunActionRefused(f"Run #{run.pk} is {run.status}; only a draft can be edited. Fork it instead.")
    checked = run_check(
        base=config,
        cluster=cluster,
        recipe=recipe,
        trainer=trainer,
        script_path=script_path,
        preset=run.preset,
        fit_override_reason=fit_override_reason,
    )
    if checked.issues:
        raise RunInvalid(checked.issues)
    new_cfg = checked.config
    new_cfg["run"].update({"id": run.pk, "name": name, "attempt": run.attempt})
    with transaction.atomic():
        before = Run.objects.select_for_update().get(pk=run.pk)
        if before.status != RunStatus.DRAFT:
            raise RunActionRefused(f"Run #{run.pk} was launched meanwhile; it can no longer be edited.")
        diff = config_diff(before.config, new_cfg)
        for field, value in (("name", name), ("trainer", trainer), ("script_path", script_path)):
            if getattr(before, field) != value:
                diff[field] = [getattr(before, field), value]
        if before.cluster_id != cluster.pk:
            diff["cluster"] = [str(before.cluster), str(cluster)]
        if before.recipe_id != recipe.pk:
            diff["recipe"] = [str(before.recipe), str(recipe)]
        Run.objects.filter(pk=run.pk).update(
            name=name,
            trainer=trainer,
            script_path=script_path,
            cluster=cluster,
            recipe=recipe,
            config=new_cfg,
            plan=checked.plan or {},
        )
        audit_record(actor=actor, action="run.edit", obj=before, diff=diff)
        before.plan = checked.plan or {}
        if not plan_fits(before.plan):
            _record_fit_override(run=before, actor=actor, reason=fit_override_reason, at="edit")
    run.refresh_from_db()
    return run


def launch_blocker(run: Run) -> str | None:
    """Why this run cannot be launched here, or None."""
    if run.trainer == Trainer.PLAN_ONLY:
        return "This run is plan only. Fork it with the reference trainer or your own script to launch it."
    if not run.cluster.runnable:
        return (
            f"Cluster {run.cluster} is kept for planning only (no machines behind it here). "
            "Fork the run onto a runnable cluster."
        )
    return None


def run_launch(*, actor: Any, run: Run, fit_override_reason: str = "") -> Run:
    blocker = launch_blocker(run)
    if blocker:
        raise RunActionRefused(blocker)
    overridden = bool((run.plan or {}).get("fit_override"))
    if not plan_fits(run.plan) and not overridden and not fit_override_reason.strip():
        issue = fit_issue(run.plan, "")
        raise RunActionRefused(issue.message if issue else "The plan does not fit.")
    if not plan_fits(run.plan) and fit_override_reason.strip():
        with transaction.atomic():
            _record_fit_override(run=run, actor=actor, reason=fit_override_reason, at="launch")
    if run.status != RunStatus.DRAFT:
        raise RunActionRefused(
            f"Run #{run.pk} is {run.status}; only a draft is launched. Resume it from a checkpoint or fork it."
        )
    with transaction.atomic():
        try:
            run = transition(run=run, to=RunStatus.QUEUED, actor=actor, action="run.launch")
        except IllegalTransition as exc:
            raise RunActionRefused(str(exc)) from None
        attempt_first(run=run, actor=actor)
        enqueue_on_commit("workers.launch_run", run_id=run.pk)
    return run


def run_cancel(*, actor: Any, run: Run, reason: str = "cancelled by user") -> Run:
    if run.status not in ACTIVE_STATUSES and run.status != RunStatus.DRAFT:
        raise RunActionRefused(f"Run #{run.pk} is already {run.status}; there is nothing to cancel.")
    was_active = run.status in ACTIVE_STATUSES
    try:
        run = transition(run=run, to=RunStatus.CANCELLED, actor=actor, action="run.cancel", reason=reason)
    except IllegalTransition as exc:
        raise RunActionRefused(str(exc)) from None
    if was_active:
        # An attempt with no job yet ends here; one with a job ends when stop_run has stopped it.
        Attempt.objects.filter(run=run, state=AttemptState.PENDING).update(
            state=AttemptState.CANCELLED, ended_at=run.finished_at, exit_summary={"reason": reason}
        )
        enqueue_on_commit("workers.stop_run", run_id=run.pk)
    return run
