"""What the data pages show, read from prep reports and training metrics: stage tables, the final mix against the
requested one, two recipe versions side by side, and the mix a training run really consumed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runs.models import DataMixRecipe, MetricSeries, PrepRun, Run
from runs.services.data_prep import latest_prep
from runs.services.diff import flatten
from runs.services.recipes import recipe_settings

STAGE_LABELS = {
    "read": "Read",
    "normalise": "Normalise",
    "language": "Language",
    "quality": "Quality",
    "toxicity": "Toxicity",
    "exact_dedup": "Exact dedup",
    "near_dedup": "Near dedup",
    "tokenize": "Tokenize",
    "mix": "Mix",
}


@dataclass(frozen=True)
class StageRow:
    source: str
    stage: str
    label: str
    docs_in: int
    docs_out: int
    chars_in: int
    chars_out: int
    tokens: int | None  # tokens out: counted at tokenize and mix, estimated before
    estimated: bool

    @property
    def removed(self) -> int:
        return self.docs_in - self.docs_out

    @property
    def kept_pct(self) -> float:
        return 100.0 * self.docs_out / self.docs_in if self.docs_in else 0.0


def stage_rows(counts: dict, order: list[str] | None = None) -> list[StageRow]:
    """One row per source and stage from a report's (or a live progress's) counts."""
    rows = []
    for source, stages in counts.items():
        names = [s for s in (order or STAGE_LABELS) if s in stages] + [s for s in stages if s not in STAGE_LABELS]
        for stage in names:
            c = stages[stage]
            counted = c.get("tokens_out") if stage in ("tokenize", "mix") else None
            estimate = c.get("tokens_out_est")
            rows.append(
                StageRow(
                    source=source,
                    stage=stage,
                    label=STAGE_LABELS.get(stage) or stage,
                    docs_in=c.get("docs_in", 0),
                    docs_out=c.get("docs_out", 0),
                    chars_in=c.get("chars_in", 0),
                    chars_out=c.get("chars_out", 0),
                    tokens=counted if counted is not None else estimate,
                    estimated=counted is None and estimate is not None,
                )
            )
    return rows


@dataclass(frozen=True)
class MixRow:
    source: str
    requested: float | None
    final: float | None
    tokens: int | None

    @property
    def gap(self) -> float | None:
        if self.requested is None or self.final is None:
            return None
        return self.final - self.requested


def mix_rows(report: dict) -> list[MixRow]:
    mix = report.get("mix") or {}
    names = list(mix.get("requested", {})) + [s for s in mix.get("final", {}) if s not in mix.get("requested", {})]
    return [
        MixRow(s, mix.get("requested", {}).get(s), mix.get("final", {}).get(s), mix.get("tokens", {}).get(s))
        for s in names
    ]


def removal_rows(report: dict) -> list[dict[str, Any]]:
    rows = []
    for rule, record in (report.get("removed") or {}).items():
        family = rule.split(":", 1)[0]
        rows.append({"rule": rule, "family": family, **record})
    return rows


def final_docs(report: dict) -> dict[str, dict]:
    """Per source: documents read, documents and tokens in the final shards."""
    out = {}
    for source, info in (report.get("sources") or {}).items():
        stages = info.get("stages", {})
        out[source] = {
            "read": stages.get("read", {}).get("docs_in"),
            "final_docs": stages.get("mix", {}).get("docs_out"),
            "final_tokens": stages.get("mix", {}).get("tokens_out"),
        }
    return out


@dataclass(frozen=True)
class CompareRow:
    key: str
    a: Any
    b: Any

    @property
    def changed(self) -> bool:
        return self.a != self.b


def recipe_comparison(a: DataMixRecipe, b: DataMixRecipe) -> dict[str, Any]:
    """Two versions side by side: weights, preparation settings, and what their newest successful preps kept."""
    wa, wb = a.weights(), b.weights()
    weights = [CompareRow(s, wa.get(s), wb.get(s)) for s in sorted(set(wa) | set(wb))]
    sa, sb = flatten(recipe_settings(a)), flatten(recipe_settings(b))
    settings = [CompareRow(k, sa.get(k), sb.get(k)) for k in sorted(set(sa) | set(sb))]
    prep_a, prep_b = latest_prep(a), latest_prep(b)
    ra, rb = (prep_a.report if prep_a else {}), (prep_b.report if prep_b else {})
    fa, fb = final_docs(ra), final_docs(rb)
    results = []
    for source in sorted(set(fa) | set(fb)):
        for key, label in (("read", "documents read"), ("final_docs", "documents kept"), ("final_tokens", "tokens")):
            results.append(CompareRow(f"{source}: {label}", fa.get(source, {}).get(key), fb.get(source, {}).get(key)))
    removed_a = {k: v["count"] for k, v in (ra.get("removed") or {}).items()}
    removed_b = {k: v["count"] for k, v in (rb.get("removed") or {}).items()}
    removals = [
        CompareRow(k, removed_a.get(k, 0), removed_b.get(k, 0)) for k in sorted(set(removed_a) | set(removed_b))
    ]
    final_a = (ra.get("mix") or {}).get("final", {})
    final_b = (rb.get("mix") or {}).get("final", {})
    mix = [CompareRow(s, final_a.get(s), final_b.get(s)) for s in sorted(set(final_a) | set(final_b))]
    vocab = CompareRow(
        "tokenizer vocabulary",
        (ra.get("tokenizer") or {}).get("vocab_size"),
        (rb.get("tokenizer") or {}).get("vocab_size"),
    )
    return {"weights": weights, "settings": settings, "prep_a": prep_a, "prep_b": prep_b, "results": results,
            "removals": removals, "mix": mix, "vocab": vocab}  # fmt: skip


@dataclass(frozen=True)
class ConsumedRow:
    source: str
    requested: float
    tokens: float | None
    consumed: float | None  # percent of all tokens consumed


def consumed_mix(run: Run) -> list[ConsumedRow]:
    """The recipe's weights beside the share of tokens the trainer drew from each source (its cumulative
    `tokens/<source>` metrics), for the run's page."""
    sources = ((run.config or {}).get("data") or {}).get("recipe", {}).get("sources", [])
    total_weight = sum(float(s.get("weight", 0)) for s in sources) or 1.0
    values = dict(
        MetricSeries.objects.filter(run=run, key__startswith="tokens/").values_list("key", "last_value")
    )  # fmt: skip
    consumed: dict[str, float | None] = {s["name"]: values.get(f"tokens/{s['name']}") for s in sources}
    total = sum(v for v in consumed.values() if v) or 0.0
    rows = []
    for s in sources:
        tokens = consumed[s["name"]]
        rows.append(
            ConsumedRow(
                source=s["name"],
                requested=100.0 * float(s.get("weight", 0)) / total_weight,
                tokens=tokens,
                consumed=100.0 * tokens / total if total and tokens is not None else None,
            )
        )
    return rows


def prep_of_run(run: Run) -> PrepRun | None:
    """The prep run whose shards the training run reads, if any."""
    shards = ((run.config or {}).get("data") or {}).get("shards_dir")
    if not shards:
        return None
    for prep in PrepRun.objects.filter(recipe_id=run.recipe_id, status="succeeded").order_by("-id"):
        if prep.shards_dir == shards:
            return prep
    return None
