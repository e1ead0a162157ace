"""The run.json schema (schema_version 1) and its parser; importable without Django or torch.

What a run directory's ``run.json`` holds is written down in docs/run-config.md; this module is that contract in
code, for the jobs (the trainer, ds_config, export) and for the control plane's own checks:
- the section dataclasses (``ModelConfig``, ``ParallelConfig``, ``BatchConfig``, ``OptimizerConfig``,
  ``TrainingConfig``, ``ReporterConfig``, ``CurriculumStage``) are the field definitions: names, types, defaults;
- ``FIELDS`` lists every field as a ``FieldSpec`` (dotted name, accepted JSON types, default or required);
- ``parse_run_config(raw)`` / ``load_run_config(run_dir)`` return a ``RunConfig`` or raise ``ConfigError`` whose
  ``field`` is the dotted name of the field to fix (its message starts with it too: ``"model.top_k: ..."``);
- ``RelaunchConfig`` (run.json's optional ``relaunch`` section) is what an automatic relaunch changes beyond the
  batch and parallel sections: data windows to skip and a learning-rate cut (jobs.common.relaunch writes it);
- ``load_capabilities()`` is the reference trainer's declaration of the layouts it runs, which the parallel.*
  rules read.
Sections the trainer does not act on (data, alerts, remediation, cluster) are kept as plain dicts in
``RunConfig.extra`` for the control plane's side.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from jobs.common.run_rules import CHOICES as CHOICES
from jobs.common.run_rules import MAX_GRAD_ACCUM as MAX_GRAD_ACCUM
from jobs.common.run_rules import OOM_REMEDIES as OOM_REMEDIES
from jobs.common.run_rules import RANGES as RANGES
from jobs.common.run_rules import REQUIRED as REQUIRED
from jobs.common.run_rules import ConfigError as ConfigError
from jobs.common.run_rules import Range as Range
from jobs.common.run_rules import check_value as check_value
from jobs.common.run_rules import field_value, require_non_negative, require_positive, section_of
from jobs.common.run_rules import range_key as range_key

SCHEMA_VERSION = 1
# The reference trainer owns this file (``python -m jobs.train --capabilities`` prints it); the control plane reads
# the same file.
CAPABILITIES_PATH = Path(__file__).resolve().parents[1] / "train" / "capabilities.json"


class FieldSpec(NamedTuple):
    name: str  # dotted, e.g. "model.top_k"
    kinds: tuple[type, ...]  # the JSON types accepted (an integer is accepted where a number is)
    default: Any  # REQUIRED when run.json must give it; None for an optional field left null
    default_from: str = ""  # for a default computed from other fields, how


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    arch: str
    attention: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    q_lora_rank: int = 0
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 16
    qk_rope_head_dim: int = 8
    v_head_dim: int = 16
    intermediate_size: int  # default: 4 x hidden_size (_DERIVED)
    moe_intermediate_size: int = 64
    num_routed_experts: int = 4
    num_shared_experts: int = 1
    top_k: int = 2
    first_k_dense: int = 1
    aux_loss_coef: float = 0.01
    rope_theta: float = 10000.0
    max_seq_len: int = 256
    tie_embeddings: bool = False
    # Extensions beyond the schema (optional keys); defaults give plain top-k routing over sigmoid scores.
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    rms_norm_eps: float = 1e-6
    init_std: float = 0.02

    @property
    def is_moe(self) -> bool:
        return self.arch == "moe"

    @property
    def is_mla(self) -> bool:
        return self.attention == "mla"

    @property
    def head_dim(self) -> int:
        """Per-head width of queries/keys for MHA (MLA uses qk_nope_head_dim + qk_rope_head_dim)."""
        return self.hidden_size // self.num_heads

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim if self.is_mla else self.head_dim

    @property
    def attn_v_head_dim(self) -> int:
        return self.v_head_dim if self.is_mla else self.head_dim

    def is_moe_layer(self, index: int) -> bool:
        return self.is_moe and index >= self.first_k_dense


@dataclass(frozen=True, kw_only=True)
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    sp: bool = False
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    activation_checkpointing: bool = False


@dataclass(frozen=True, kw_only=True)
class BatchConfig:
    global_batch_tokens: int
    micro_batch: int
    grad_accum: int = 1
    seq_len: int
    tolerance_pct: float = 5.0


@dataclass(frozen=True, kw_only=True)
class OptimizerConfig:
    name: str = "adamw"
    lr: float
    min_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    torch_adam: bool = True


@dataclass(frozen=True, kw_only=True)
class CurriculumStage:
    start_step: int
    seq_len: int


@dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    total_steps: int
    token_budget: int | None = None
    checkpoint_interval: int = 0
    keep_checkpoints: int = 3
    keep_every: int = 0
    seed: int = 1234
    log_interval: int = 1
    nan_policy: str = "abort"


@dataclass(frozen=True, kw_only=True)
class ReporterConfig:
    ingest_url: str | None = None
    every_n_steps: int = 1
    batch_size: int = 50
    flush_interval_s: float = 1.0
    system_metrics_s: float | None = None
    wall_time: bool = False


# How an own-script job is handed its DeepSpeed config (own_script.ds_config_arg): the argument the script parses,
# or "env" for none (the path is then only in the CP_DS_CONFIG variable, which every own-script job gets).
DS_CONFIG_ARGS = ("--deepspeed_config", "--deepspeed", "env")
# own_script.ds_config_style: "deepspeed" writes every number from run.json; "hf" writes "auto" wherever the
# Hugging Face Trainer fills a value from its own arguments (it refuses a config whose numbers disagree with them).
DS_CONFIG_STYLES = ("deepspeed", "hf")


@dataclass(frozen=True, kw_only=True)
class OwnScriptConfig:
    ds_config_arg: str = "--deepspeed_config"
    ds_config_style: str = "deepspeed"
    args: tuple[str, ...] = ()  # the script's own arguments, after the DeepSpeed config's


@dataclass(frozen=True, kw_only=True)
class RelaunchConfig:
    """Changes an automatic relaunch carries beyond the batch and parallel sections (docs/run-config.md).

    ``skip_data``: windows ``[a, b)`` of data steps never trained on. Data step d is the data a run without windows
    trains on at step d; with windows, step s trains on the s-th data step outside every window. ``lr_cut_factor``
    multiplies the schedule's lr for steps ``lr_cut_from_step`` .. ``lr_cut_from_step + lr_cut_steps - 1``.
    """

    skip_data: tuple[tuple[int, int], ...] = ()
    lr_cut_factor: float = 1.0
    lr_cut_from_step: int = 0
    lr_cut_steps: int = 0
    reason: str = ""

    def data_step(self, step: int) -> int:
        """The data step that optimizer step ``step`` (1-based) trains on."""
        d = step
        for a, b in self.skip_data:  # sorted, disjoint
            if d >= a:
                d += b - a
        return d

    def lr_scale(self, step: int) -> float:
        start = self.lr_cut_from_step
        return self.lr_cut_factor if start <= step < start + self.lr_cut_steps else 1.0


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    raw: dict
    run_id: int | None
    run_name: str
    attempt: int
    model: ModelConfig
    parallel: ParallelConfig
    batch: BatchConfig
    optimizer: OptimizerConfig
    precision: str
    curriculum: tuple[CurriculumStage, ...]
    training: TrainingConfig
    reporter: ReporterConfig
    relaunch: RelaunchConfig = RelaunchConfig()
    own_script: OwnScriptConfig = OwnScriptConfig()
    extra: dict = field(default_factory=dict)

    def dp_size(self, world_size: int) -> int:
        model_parallel = self.parallel.tp * self.parallel.pp
        if world_size % model_parallel:
            raise ConfigError("parallel", f"world size {world_size} is not a multiple of tp*pp = {model_parallel}")
        return world_size // model_parallel

    def tokens_per_step(self, world_size: int) -> int:
        b = self.batch
        return b.micro_batch * b.grad_accum * self.dp_size(world_size) * b.seq_len

    def check_world(self, world_size: int) -> None:
        """Checks that need the launched world size; raises ConfigError naming the field."""
        dp = self.dp_size(world_size)
        ep = self.parallel.ep
        if dp % ep:
            raise ConfigError("parallel.ep", f"{ep} must divide the data-parallel size {dp} (world {world_size})")
        tokens = self.tokens_per_step(world_size)
        want = self.batch.global_batch_tokens
        off_pct = abs(tokens - want) / want * 100.0
        if off_pct > self.batch.tolerance_pct:
            raise ConfigError(
                "batch.global_batch_tokens",
                f"micro_batch*grad_accum*dp*seq_len = {tokens} with dp={dp} is "
                f"{off_pct:.1f}% off {want} (tolerance_pct {self.batch.tolerance_pct})",
            )


# Defaults computed from fields read before them: (how, from the section's values so far).
_DERIVED: dict[str, tuple[str, Callable[[dict[str, Any]], Any]]] = {
    "model.intermediate_size": ("4 x model.hidden_size", lambda values: 4 * values["hidden_size"]),
}
_SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "parallel": ParallelConfig,
    "batch": BatchConfig,
    "optimizer": OptimizerConfig,
    "training": TrainingConfig,
    "reporter": ReporterConfig,
    "relaunch": RelaunchConfig,
    "own_script": OwnScriptConfig,
}


def _kinds(annotation: Any) -> tuple[type, ...]:
    """JSON types a field of this annotation accepts: int, float, str, bool, a list for a tuple; None is 'absent'."""
    if isinstance(annotation, types.UnionType):
        return tuple(k for a in typing.get_args(annotation) if a is not type(None) for k in _kinds(a))
    if typing.get_origin(annotation) is tuple:
        return (list,)
    return (annotation,)


def _default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default


def _read(cls: type, section: dict, path: str, **given: Any) -> Any:
    """An instance of the section dataclass `cls` from run.json's `section`: each field type-checked, absent or null
    ones taking their default. `given` supplies fields the caller read itself."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in given:
            values[f.name] = given[f.name]
            continue
        default = f.default
        derived = _DERIVED.get(f"{path}.{f.name}")
        if derived is not None:
            default = derived[1](values)
        kinds = _kinds(hints[f.name])
        values[f.name] = field_value(section, path, f.name, kinds[0] if len(kinds) == 1 else kinds, default)
    return cls(**values)


def _field_specs() -> dict[str, FieldSpec]:
    specs: dict[str, FieldSpec] = {}
    for section, cls in _SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            name = f"{section}.{f.name}"
            how = _DERIVED[name][0] if name in _DERIVED else ""
            specs[name] = FieldSpec(name, _kinds(hints[f.name]), None if how else f.default, how)
    hints = typing.get_type_hints(CurriculumStage)
    for f in dataclasses.fields(CurriculumStage):
        specs[f"curriculum[].{f.name}"] = FieldSpec(f"curriculum[].{f.name}", _kinds(hints[f.name]), f.default)
    specs["precision"] = FieldSpec("precision", (str,), "fp32")
    return specs


def _parse_model(raw: dict) -> ModelConfig:
    m = _read(ModelConfig, section_of(raw, "model"), "model")
    if m.arch not in ("moe", "dense"):
        raise ConfigError("model.arch", f"expected 'moe' or 'dense', got {m.arch!r}")
    if m.attention not in ("mla", "mha"):
        raise ConfigError("model.attention", f"expected 'mla' or 'mha', got {m.attention!r}")
    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_seq_len"):
        require_positive(f"model.{key}", getattr(m, key))
    for key in ("rope_theta", "rms_norm_eps"):
        require_positive(f"model.{key}", getattr(m, key))
    require_non_negative("model.init_std", m.init_std)
    if m.is_mla:
        for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            require_positive(f"model.{key}", getattr(m, key))
        require_non_negative("model.q_lora_rank", m.q_lora_rank)
        if m.qk_rope_head_dim % 2:
            raise ConfigError("model.qk_rope_head_dim", f"must be even for rotary embeddings, got {m.qk_rope_head_dim}")
    else:
        if m.hidden_size % m.num_heads:
            raise ConfigError("model.num_heads", f"{m.num_heads} must divide hidden_size {m.hidden_size}")
        if m.head_dim % 2:
            raise ConfigError("model.num_heads", f"head_dim hidden_size/num_heads = {m.head_dim} must be even")
    if m.is_moe:
        for key in ("moe_intermediate_size", "num_routed_experts", "top_k", "n_group", "topk_group"):
            require_positive(f"model.{key}", getattr(m, key))
        require_non_negative("model.num_shared_experts", m.num_shared_experts)
        require_non_negative("model.aux_loss_coef", m.aux_loss_coef)
        require_positive("model.routed_scaling_factor", m.routed_scaling_factor)
        if not 0 <= m.first_k_dense < m.num_layers:
            raise ConfigError("model.first_k_dense", f"must be in [0, num_layers), got {m.first_k_dense}")
        if m.num_routed_experts % m.n_group:
            raise ConfigError("model.n_group", f"{m.n_group} must divide num_routed_experts {m.num_routed_experts}")
        if m.num_routed_experts // m.n_group < 2:
            raise ConfigError(
                "model.n_group", "each expert group needs >= 2 experts (groups are scored by their top 2)"
            )
        if m.topk_group > m.n_group:
            raise ConfigError("model.topk_group", f"{m.topk_group} exceeds n_group {m.n_group}")
        if m.top_k > m.topk_group * (m.num_routed_experts // m.n_group):
            raise ConfigError("model.top_k", f"{m.top_k} exceeds the experts in the {m.topk_group} selected group(s)")
    return m


def _parse_parallel(raw: dict, model: ModelConfig) -> ParallelConfig:
    par = _read(ParallelConfig, section_of(raw, "parallel"), "parallel")
    caps = load_capabilities()
    if par.tp not in caps["tp"]:
        raise ConfigError("parallel.tp", f"{par.tp} not supported by the reference trainer ({caps['reasons']['tp']})")
    if par.pp not in caps["pp"]:
        raise ConfigError("parallel.pp", f"{par.pp} not supported by the reference trainer ({caps['reasons']['pp']})")
    if par.sp and not caps["sp"]:
        raise ConfigError("parallel.sp", f"not supported by the reference trainer ({caps['reasons']['sp']})")
    if par.zero_stage not in caps["zero_stages"]:
        raise ConfigError("parallel.zero_stage", f"expected one of {caps['zero_stages']}, got {par.zero_stage}")
    require_positive("parallel.ep", par.ep)
    if par.tp > 1:
        _check_tp(par.tp, model)
    if par.sp and par.tp == 1:
        raise ConfigError("parallel.sp", "sequence parallelism splits the sequence over the tensor-parallel group: "
                          "it needs parallel.tp > 1")  # fmt: skip
    if par.pp > 1:
        if par.pp > model.num_layers:
            raise ConfigError("parallel.pp", f"{par.pp} exceeds model.num_layers ({model.num_layers}): each "
                              "pipeline stage needs at least one decoder layer")  # fmt: skip
        if par.zero_stage > 1:
            raise ConfigError("parallel.zero_stage", caps["reasons"]["pp_zero"])
        if model.tie_embeddings:
            raise ConfigError("model.tie_embeddings", caps["reasons"]["pp_tied"])
        nan_policy = section_of(raw, "training").get("nan_policy", "abort")
        if nan_policy != "abort":
            raise ConfigError("training.nan_policy", caps["reasons"]["pp_nan_skip"])
    if par.ep > 1:
        if not model.is_moe:
            raise ConfigError("parallel.ep", "expert parallelism needs model.arch 'moe'")
        if model.num_routed_experts % par.ep:
            raise ConfigError(
                "parallel.ep", f"{par.ep} must divide model.num_routed_experts {model.num_routed_experts}"
            )
        if par.zero_stage == 3:
            raise ConfigError("parallel.ep", caps["reasons"]["ep_zero3"])
        if par.tp > 1 and par.zero_stage == 0:
            raise ConfigError("parallel.zero_stage", caps["reasons"]["tp_ep_zero0"])
    if par.offload_param and par.zero_stage != 3:
        raise ConfigError("parallel.offload_param", "parameter offload needs zero_stage 3")
    if par.offload_optimizer and par.zero_stage == 0:
        raise ConfigError("parallel.offload_optimizer", "optimizer offload needs zero_stage 1, 2 or 3")
    return par


def _check_tp(tp: int, model: ModelConfig) -> None:
    """Tensor parallelism splits heads, the vocabulary and the MLP widths evenly over the tp ranks."""
    sharded = [("model.num_heads", model.num_heads), ("model.vocab_size", model.vocab_size),
               ("model.intermediate_size", model.intermediate_size)]  # fmt: skip
    if model.is_moe and model.num_shared_experts:
        sharded.append(("model.moe_intermediate_size x num_shared_experts",
                        model.moe_intermediate_size * model.num_shared_experts))  # fmt: skip
    for name, value in sharded:
        if value % tp:
            raise ConfigError("parallel.tp", f"{tp} must divide {name} ({value}): tensor parallelism splits it evenly")


def _parse_batch(raw: dict) -> BatchConfig:
    b = _read(BatchConfig, section_of(raw, "batch"), "batch")
    for key in ("global_batch_tokens", "micro_batch", "grad_accum", "seq_len"):
        require_positive(f"batch.{key}", getattr(b, key))
    require_non_negative("batch.tolerance_pct", b.tolerance_pct)
    return b


def _parse_optimizer(raw: dict) -> OptimizerConfig:
    s = section_of(raw, "optimizer")
    betas = field_value(s, "optimizer", "betas", list, list(_default(OptimizerConfig, "betas")))
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas):
        raise ConfigError("optimizer.betas", f"expected two numbers, got {betas!r}")
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError("optimizer.betas", f"each must be in [0, 1), got {betas!r}")
    o = _read(OptimizerConfig, s, "optimizer", betas=(float(betas[0]), float(betas[1])))
    if o.name.lower() != "adamw":
        raise ConfigError("optimizer.name", f"only 'adamw' is supported, got {o.name!r}")
    require_positive("optimizer.lr", o.lr)
    require_positive("optimizer.eps", o.eps)
    for key in ("min_lr", "weight_decay", "grad_clip", "warmup_steps"):
        require_non_negative(f"optimizer.{key}", getattr(o, key))
    if o.min_lr > o.lr:
        raise ConfigError("optimizer.min_lr", f"{o.min_lr} exceeds lr {o.lr}")
    if o.schedule not in ("cosine", "constant"):
        raise ConfigError("optimizer.schedule", f"expected 'cosine' or 'constant', got {o.schedule!r}")
    return o


def _parse_curriculum(raw: dict, batch: BatchConfig) -> tuple[CurriculumStage, ...]:
    stages = raw.get("curriculum") or []
    if not isinstance(stages, list):
        raise ConfigError("curriculum", "expected a list of {start_step, seq_len}")
    out: list[CurriculumStage] = []
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise ConfigError(f"curriculum[{i}]", "expected an object")
        stage = _read(CurriculumStage, st, f"curriculum[{i}]")
        require_positive(f"curriculum[{i}].seq_len", stage.seq_len)
        if batch.seq_len % stage.seq_len:
            raise ConfigError(f"curriculum[{i}].seq_len", f"{stage.seq_len} must divide batch.seq_len {batch.seq_len}")
        if out and stage.start_step <= out[-1].start_step:
            raise ConfigError(f"curriculum[{i}].start_step", "stages must be sorted by strictly increasing start_step")
        if out and stage.seq_len < out[-1].seq_len:
            raise ConfigError(f"curriculum[{i}].seq_len", "lengths must never decrease")
        out.append(stage)
    if out and out[0].start_step != 0:
        raise ConfigError("curriculum[0].start_step", "the curriculum must start at step 0")
    return tuple(out)


def _parse_training(raw: dict) -> TrainingConfig:
    t = _read(TrainingConfig, section_of(raw, "training"), "training")
    require_positive("training.total_steps", t.total_steps)
    require_non_negative("training.checkpoint_interval", t.checkpoint_interval)
    require_positive("training.keep_checkpoints", t.keep_checkpoints)
    require_non_negative("training.keep_every", t.keep_every)
    require_positive("training.log_interval", t.log_interval)
    if t.nan_policy not in ("abort", "skip"):
        raise ConfigError("training.nan_policy", f"expected 'abort' or 'skip', got {t.nan_policy!r}")
    return t


def _parse_reporter(raw: dict) -> ReporterConfig:
    r = _read(ReporterConfig, raw.get("reporter") or {}, "reporter")
    require_positive("reporter.every_n_steps", r.every_n_steps)
    require_positive("reporter.batch_size", r.batch_size)
    require_positive("reporter.flush_interval_s", r.flush_interval_s)
    return r


def _parse_relaunch(raw: dict) -> RelaunchConfig:
    section = raw.get("relaunch") or {}
    if not isinstance(section, dict):
        raise ConfigError("relaunch", "expected an object")
    windows = field_value(section, "relaunch", "skip_data", list, [])
    pairs: list[tuple[int, int]] = []
    for i, w in enumerate(windows):
        ok = isinstance(w, list) and len(w) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in w)
        if not ok or not 1 <= w[0] < w[1]:
            raise ConfigError(
                f"relaunch.skip_data[{i}]", f"expected [first, end) data steps with 1 <= first < end, got {w!r}"
            )
        if pairs and w[0] < pairs[-1][1]:
            raise ConfigError(f"relaunch.skip_data[{i}]", "windows must be sorted and must not overlap")
        pairs.append((w[0], w[1]))
    r = _read(RelaunchConfig, section, "relaunch", skip_data=tuple(pairs))
    if not 0.0 < r.lr_cut_factor <= 1.0:
        raise ConfigError("relaunch.lr_cut_factor", f"must be in (0, 1], got {r.lr_cut_factor}")
    require_non_negative("relaunch.lr_cut_from_step", r.lr_cut_from_step)
    require_non_negative("relaunch.lr_cut_steps", r.lr_cut_steps)
    return r


def parse_own_script(raw: dict) -> OwnScriptConfig:
    """The optional own_script section (the trainer "own_script" reads it; others ignore it)."""
    section = raw.get("own_script") or {}
    if not isinstance(section, dict):
        raise ConfigError("own_script", "expected an object {ds_config_arg, ds_config_style, args}")
    args = field_value(section, "own_script", "args", list, [])
    for i, arg in enumerate(args):
        if not isinstance(arg, str) or "\0" in arg:
            raise ConfigError(f"own_script.args[{i}]", f"expected a string without NUL bytes, got {arg!r}")
    o = _read(OwnScriptConfig, section, "own_script", args=tuple(args))
    if o.ds_config_arg not in DS_CONFIG_ARGS:
        raise ConfigError(
            "own_script.ds_config_arg", f"expected one of {', '.join(DS_CONFIG_ARGS)}, got {o.ds_config_arg!r}"
        )
    if o.ds_config_style not in DS_CONFIG_STYLES:
        raise ConfigError(
            "own_script.ds_config_style", f"expected one of {', '.join(DS_CONFIG_STYLES)}, got {o.ds_config_style!r}"
        )
    return o


def parse_run_config(raw: dict) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError("run.json", "expected a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError("schema_version", f"expected {SCHEMA_VERSION}, got {version!r}")
    run = raw.get("run") or {}
    model = _parse_model(raw)
    parallel = _parse_parallel(raw, model)
    batch = _parse_batch(raw)
    if batch.seq_len > model.max_seq_len:
        raise ConfigError("batch.seq_len", f"{batch.seq_len} exceeds model.max_seq_len {model.max_seq_len}")
    precision = raw.get("precision", "fp32")
    check_value("precision", precision)
    curriculum = _parse_curriculum(raw, batch)
    if parallel.sp:
        lengths = [("batch.seq_len", batch.seq_len)]
        lengths += [(f"curriculum[{i}].seq_len", c.seq_len) for i, c in enumerate(curriculum)]
        for name, length in lengths:
            if length % parallel.tp:
                raise ConfigError(name, f"{length} is not divisible by parallel.tp {parallel.tp}: sequence "
                                  "parallelism splits every sequence evenly over the tensor-parallel ranks")  # fmt: skip
    training = _parse_training(raw)
    if training.token_budget is not None:
        require_positive("training.token_budget", training.token_budget)
    extra = {k: raw[k] for k in ("data", "alerts", "remediation", "cluster") if k in raw}
    return RunConfig(
        raw=raw,
        run_id=run.get("id"),
        run_name=str(run.get("name", "")),
        attempt=int(run.get("attempt", 1)),
        model=model,
        parallel=parallel,
        batch=batch,
        optimizer=_parse_optimizer(raw),
        precision=precision,
        curriculum=curriculum,
        training=training,
        reporter=_parse_reporter(raw),
        relaunch=_parse_relaunch(raw),
        own_script=parse_own_script(raw),
        extra=extra,
    )


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "run.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError("run.json", f"not found at {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError("run.json", f"invalid JSON ({exc})") from None
    return parse_run_config(raw)


def expected_total_steps(token_budget: int, tokens_per_step: int) -> int:
    return math.ceil(token_budget / tokens_per_step)


def load_capabilities() -> dict:
    """The reference trainer's declaration of the layouts it runs (the parallel.* rules above read it)."""
    return json.loads(CAPABILITIES_PATH.read_text())


# Every field of run.json's sections that the jobs read, by dotted name ("model.top_k", "curriculum[].seq_len").
FIELDS: dict[str, FieldSpec] = _field_specs()
