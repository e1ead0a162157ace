"""Parse and validate a run directory's ``run.json`` (schema_version 1, see docs/run-config.md).

Every error names the field it is about (``ConfigError("model.top_k: ...")``) so that a run refused by the trainer
tells the user what to fix. Sections the trainer does not act on (alerts, remediation, cluster) are kept as plain
dicts for the control plane's side.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
# The reference trainer owns this file (``python -m jobs.train --capabilities`` prints it); the control plane reads
# the same file.
CAPABILITIES_PATH = Path(__file__).resolve().parents[1] / "train" / "capabilities.json"
_REQUIRED = object()


class ConfigError(ValueError):
    """run.json is malformed; the message starts with the dotted name of the field."""


def _field(section: dict, path: str, key: str, kind: type | tuple, default: Any = _REQUIRED) -> Any:
    name = f"{path}.{key}"
    if key not in section or section[key] is None:
        if default is _REQUIRED:
            raise ConfigError(f"{name}: required")
        return default
    value = section[key]
    # bool is an int subclass; a stray true/false must not pass as a number.
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise ConfigError(f"{name}: expected {_kind_name(kind)}, got {value!r}")
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise ConfigError(f"{name}: expected {_kind_name(kind)}, got {value!r}")
    return value


def _kind_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {int: "integer", float: "number", str: "string", bool: "boolean"}.get(k, k.__name__) for k in kinds
    )


def _positive(name: str, value: int | float) -> None:
    if value <= 0:
        raise ConfigError(f"{name}: must be > 0, got {value}")


def _non_negative(name: str, value: int | float) -> None:
    if value < 0:
        raise ConfigError(f"{name}: must be >= 0, got {value}")


def _section(raw: dict, key: str) -> dict:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: required object")
    return value


@dataclass(frozen=True)
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
    intermediate_size: int = 256
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


@dataclass(frozen=True)
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    ep: int = 1
    sp: bool = False
    zero_stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    activation_checkpointing: bool = False


@dataclass(frozen=True)
class BatchConfig:
    global_batch_tokens: int
    micro_batch: int
    grad_accum: int
    seq_len: int
    tolerance_pct: float = 5.0


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 0.0
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    schedule: str = "cosine"
    torch_adam: bool = True


@dataclass(frozen=True)
class CurriculumStage:
    start_step: int
    seq_len: int


@dataclass(frozen=True)
class TrainingConfig:
    total_steps: int
    token_budget: int | None = None
    checkpoint_interval: int = 0
    keep_checkpoints: int = 3
    keep_every: int = 0
    seed: int = 1234
    log_interval: int = 1
    nan_policy: str = "abort"


@dataclass(frozen=True)
class ReporterConfig:
    ingest_url: str | None = None
    every_n_steps: int = 1
    batch_size: int = 50
    flush_interval_s: float = 1.0


@dataclass(frozen=True)
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
    extra: dict = field(default_factory=dict)

    def dp_size(self, world_size: int) -> int:
        model_parallel = self.parallel.tp * self.parallel.pp
        if world_size % model_parallel:
            raise ConfigError(f"parallel: world size {world_size} is not a multiple of tp*pp = {model_parallel}")
        return world_size // model_parallel

    def tokens_per_step(self, world_size: int) -> int:
        b = self.batch
        return b.micro_batch * b.grad_accum * self.dp_size(world_size) * b.seq_len

    def check_world(self, world_size: int) -> None:
        """Checks that need the launched world size; raises ConfigError naming the field."""
        dp = self.dp_size(world_size)
        ep = self.parallel.ep
        if dp % ep:
            raise ConfigError(f"parallel.ep: {ep} must divide the data-parallel size {dp} (world {world_size})")
        tokens = self.tokens_per_step(world_size)
        want = self.batch.global_batch_tokens
        off_pct = abs(tokens - want) / want * 100.0
        if off_pct > self.batch.tolerance_pct:
            raise ConfigError(
                f"batch.global_batch_tokens: micro_batch*grad_accum*dp*seq_len = {tokens} with dp={dp} is "
                f"{off_pct:.1f}% off {want} (tolerance_pct {self.batch.tolerance_pct})"
            )


def _parse_model(raw: dict) -> ModelConfig:
    s = _section(raw, "model")
    p = "model"
    m = ModelConfig(
        arch=_field(s, p, "arch", str),
        attention=_field(s, p, "attention", str),
        vocab_size=_field(s, p, "vocab_size", int),
        hidden_size=_field(s, p, "hidden_size", int),
        num_layers=_field(s, p, "num_layers", int),
        num_heads=_field(s, p, "num_heads", int),
        q_lora_rank=_field(s, p, "q_lora_rank", int, 0),
        kv_lora_rank=_field(s, p, "kv_lora_rank", int, 32),
        qk_nope_head_dim=_field(s, p, "qk_nope_head_dim", int, 16),
        qk_rope_head_dim=_field(s, p, "qk_rope_head_dim", int, 8),
        v_head_dim=_field(s, p, "v_head_dim", int, 16),
        intermediate_size=_field(s, p, "intermediate_size", int, 4 * _field(s, p, "hidden_size", int)),
        moe_intermediate_size=_field(s, p, "moe_intermediate_size", int, 64),
        num_routed_experts=_field(s, p, "num_routed_experts", int, 4),
        num_shared_experts=_field(s, p, "num_shared_experts", int, 1),
        top_k=_field(s, p, "top_k", int, 2),
        first_k_dense=_field(s, p, "first_k_dense", int, 1),
        aux_loss_coef=_field(s, p, "aux_loss_coef", float, 0.01),
        rope_theta=_field(s, p, "rope_theta", float, 10000.0),
        max_seq_len=_field(s, p, "max_seq_len", int, 256),
        tie_embeddings=_field(s, p, "tie_embeddings", bool, False),
        n_group=_field(s, p, "n_group", int, 1),
        topk_group=_field(s, p, "topk_group", int, 1),
        routed_scaling_factor=_field(s, p, "routed_scaling_factor", float, 1.0),
        norm_topk_prob=_field(s, p, "norm_topk_prob", bool, True),
        rms_norm_eps=_field(s, p, "rms_norm_eps", float, 1e-6),
        init_std=_field(s, p, "init_std", float, 0.02),
    )
    if m.arch not in ("moe", "dense"):
        raise ConfigError(f"model.arch: expected 'moe' or 'dense', got {m.arch!r}")
    if m.attention not in ("mla", "mha"):
        raise ConfigError(f"model.attention: expected 'mla' or 'mha', got {m.attention!r}")
    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size", "max_seq_len"):
        _positive(f"model.{key}", getattr(m, key))
    for key in ("rope_theta", "rms_norm_eps"):
        _positive(f"model.{key}", getattr(m, key))
    _non_negative("model.init_std", m.init_std)
    if m.is_mla:
        for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            _positive(f"model.{key}", getattr(m, key))
        _non_negative("model.q_lora_rank", m.q_lora_rank)
        if m.qk_rope_head_dim % 2:
            raise ConfigError(f"model.qk_rope_head_dim: must be even for rotary embeddings, got {m.qk_rope_head_dim}")
    else:
        if m.hidden_size % m.num_heads:
            raise ConfigError(f"model.num_heads: {m.num_heads} must divide hidden_size {m.hidden_size}")
        if m.head_dim % 2:
            raise ConfigError(f"model.num_heads: head_dim hidden_size/num_heads = {m.head_dim} must be even")
    if m.is_moe:
        for key in ("moe_intermediate_size", "num_routed_experts", "top_k", "n_group", "topk_group"):
            _positive(f"model.{key}", getattr(m, key))
        _non_negative("model.num_shared_experts", m.num_shared_experts)
        _non_negative("model.aux_loss_coef", m.aux_loss_coef)
        _positive("model.routed_scaling_factor", m.routed_scaling_factor)
        if not 0 <= m.first_k_dense < m.num_layers:
            raise ConfigError(f"model.first_k_dense: must be in [0, num_layers), got {m.first_k_dense}")
        if m.num_routed_experts % m.n_group:
            raise ConfigError(f"model.n_group: {m.n_group} must divide num_routed_experts {m.num_routed_experts}")
        if m.num_routed_experts // m.n_group < 2:
            raise ConfigError("model.n_group: each expert group needs >= 2 experts (groups are scored by their top 2)")
        if m.topk_group > m.n_group:
            raise ConfigError(f"model.topk_group: {m.topk_group} exceeds n_group {m.n_group}")
        if m.top_k > m.topk_group * (m.num_routed_experts // m.n_group):
            raise ConfigError(f"model.top_k: {m.top_k} exceeds the experts in the {m.topk_group} selected group(s)")
    return m


def _parse_parallel(raw: dict, model: ModelConfig) -> ParallelConfig:
    s = _section(raw, "parallel")
    p = "parallel"
    par = ParallelConfig(
        tp=_field(s, p, "tp", int, 1),
        pp=_field(s, p, "pp", int, 1),
        ep=_field(s, p, "ep", int, 1),
        sp=_field(s, p, "sp", bool, False),
        zero_stage=_field(s, p, "zero_stage", int, 0),
        offload_optimizer=_field(s, p, "offload_optimizer", bool, False),
        offload_param=_field(s, p, "offload_param", bool, False),
        activation_checkpointing=_field(s, p, "activation_checkpointing", bool, False),
    )
    caps = load_capabilities()
    if par.tp not in caps["tp"]:
        raise ConfigError(f"parallel.tp: {par.tp} not supported by the reference trainer ({caps['reasons']['tp']})")
    if par.pp not in caps["pp"]:
        raise ConfigError(f"parallel.pp: {par.pp} not supported by the reference trainer ({caps['reasons']['pp']})")
    if par.sp and not caps["sp"]:
        raise ConfigError(f"parallel.sp: not supported by the reference trainer ({caps['reasons']['sp']})")
    if par.zero_stage not in caps["zero_stages"]:
        raise ConfigError(f"parallel.zero_stage: expected one of {caps['zero_stages']}, got {par.zero_stage}")
    _positive("parallel.ep", par.ep)
    if par.ep > 1:
        if not model.is_moe:
            raise ConfigError("parallel.ep: expert parallelism needs model.arch 'moe'")
        if model.num_routed_experts % par.ep:
            raise ConfigError(f"parallel.ep: {par.ep} must divide model.num_routed_experts {model.num_routed_experts}")
        if par.zero_stage == 3:
            raise ConfigError(f"parallel.ep: {caps['reasons']['ep_zero3']}")
    if par.offload_param and par.zero_stage != 3:
        raise ConfigError("parallel.offload_param: parameter offload needs zero_stage 3")
    if par.offload_optimizer and par.zero_stage == 0:
        raise ConfigError("parallel.offload_optimizer: optimizer offload needs zero_stage 1, 2 or 3")
    return par


def _parse_batch(raw: dict) -> BatchConfig:
    s = _section(raw, "batch")
    p = "batch"
    b = BatchConfig(
        global_batch_tokens=_field(s, p, "global_batch_tokens", int),
        micro_batch=_field(s, p, "micro_batch", int),
        grad_accum=_field(s, p, "grad_accum", int, 1),
        seq_len=_field(s, p, "seq_len", int),
        tolerance_pct=_field(s, p, "tolerance_pct", float, 5.0),
    )
    for key in ("global_batch_tokens", "micro_batch", "grad_accum", "seq_len"):
        _positive(f"batch.{key}", getattr(b, key))
    _non_negative("batch.tolerance_pct", b.tolerance_pct)
    return b


def _parse_optimizer(raw: dict) -> OptimizerConfig:
    s = _section(raw, "optimizer")
    p = "optimizer"
    betas = _field(s, p, "betas", list, [0.9, 0.95])
    if len(betas) != 2 or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in betas):
        raise ConfigError(f"optimizer.betas: expected two numbers, got {betas!r}")
    if not all(0.0 <= b < 1.0 for b in betas):
        raise ConfigError(f"optimizer.betas: each must be in [0, 1), got {betas!r}")
    o = OptimizerConfig(
        name=_field(s, p, "name", str, "adamw"),
        lr=_field(s, p, "lr", float),
        min_lr=_field(s, p, "min_lr", float, 0.0),
        betas=(float(betas[0]), float(betas[1])),
        eps=_field(s, p, "eps", float, 1e-8),
        weight_decay=_field(s, p, "weight_decay", float, 0.0),
        grad_clip=_field(s, p, "grad_clip", float, 1.0),
        warmup_steps=_field(s, p, "warmup_steps", int, 0),
        schedule=_field(s, p, "schedule", str, "cosine"),
        torch_adam=_field(s, p, "torch_adam", bool, True),
    )
    if o.name.lower() != "adamw":
        raise ConfigError(f"optimizer.name: only 'adamw' is supported, got {o.name!r}")
    _positive("optimizer.lr", o.lr)
    _positive("optimizer.eps", o.eps)
    for key in ("min_lr", "weight_decay", "grad_clip", "warmup_steps"):
        _non_negative(f"optimizer.{key}", getattr(o, key))
    if o.min_lr > o.lr:
        raise ConfigError(f"optimizer.min_lr: {o.min_lr} exceeds lr {o.lr}")
    if o.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optimizer.schedule: expected 'cosine' or 'constant', got {o.schedule!r}")
    return o


def _parse_curriculum(raw: dict, batch: BatchConfig) -> tuple[CurriculumStage, ...]:
    stages = raw.get("curriculum") or []
    if not isinstance(stages, list):
        raise ConfigError("curriculum: expected a list of {start_step, seq_len}")
    out = []
    for i, st in enumerate(stages):
        if not isinstance(st, dict):
            raise ConfigError(f"curriculum[{i}]: expected an object")
        stage = CurriculumStage(
            _field(st, f"curriculum[{i}]", "start_step", int), _field(st, f"curriculum[{i}]", "seq_len", int)
        )
        _positive(f"curriculum[{i}].seq_len", stage.seq_len)
        if batch.seq_len % stage.seq_len:
            raise ConfigError(f"curriculum[{i}].seq_len: {stage.seq_len} must divide batch.seq_len {batch.seq_len}")
        if out and stage.start_step <= out[-1].start_step:
            raise ConfigError(f"curriculum[{i}].start_step: stages must be sorted by strictly increasing start_step")
        if out and stage.seq_len < out[-1].seq_len:
            raise ConfigError(f"curriculum[{i}].seq_len: lengths must never decrease")
        out.append(stage)
    if out and out[0].start_step != 0:
        raise ConfigError("curriculum[0].start_step: the curriculum must start at step 0")
    return tuple(out)


def _parse_training(raw: dict) -> TrainingConfig:
    s = _section(raw, "training")
    p = "training"
    t = TrainingConfig(
        total_steps=_field(s, p, "total_steps", int),
        token_budget=_field(s, p, "token_budget", int, None),
        checkpoint_interval=_field(s, p, "checkpoint_interval", int, 0),
        keep_checkpoints=_field(s, p, "keep_checkpoints", int, 3),
        keep_every=_field(s, p, "keep_every", int, 0),
        seed=_field(s, p, "seed", int, 1234),
        log_interval=_field(s, p, "log_interval", int, 1),
        nan_policy=_field(s, p, "nan_policy", str, "abort"),
    )
    _positive("training.total_steps", t.total_steps)
    _non_negative("training.checkpoint_interval", t.checkpoint_interval)
    _positive("training.keep_checkpoints", t.keep_checkpoints)
    _non_negative("training.keep_every", t.keep_every)
    _positive("training.log_interval", t.log_interval)
    if t.nan_policy not in ("abort", "skip"):
        raise ConfigError(f"training.nan_policy: expected 'abort' or 'skip', got {t.nan_policy!r}")
    return t


def _parse_reporter(raw: dict) -> ReporterConfig:
    s = raw.get("reporter") or {}
    p = "reporter"
    r = ReporterConfig(
        ingest_url=_field(s, p, "ingest_url", str, None),
        every_n_steps=_field(s, p, "every_n_steps", int, 1),
        batch_size=_field(s, p, "batch_size", int, 50),
        flush_interval_s=_field(s, p, "flush_interval_s", float, 1.0),
    )
    _positive("reporter.every_n_steps", r.every_n_steps)
    _positive("reporter.batch_size", r.batch_size)
    _positive("reporter.flush_interval_s", r.flush_interval_s)
    return r


def parse_run_config(raw: dict) -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError("run.json: expected a JSON object")
    version = raw.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ConfigError(f"schema_version: expected {SCHEMA_VERSION}, got {version!r}")
    run = raw.get("run") or {}
    model = _parse_model(raw)
    parallel = _parse_parallel(raw, model)
    batch = _parse_batch(raw)
    if batch.seq_len > model.max_seq_len:
        raise ConfigError(f"batch.seq_len: {batch.seq_len} exceeds model.max_seq_len {model.max_seq_len}")
    precision = raw.get("precision", "fp32")
    if precision not in ("fp32", "bf16"):
        raise ConfigError(f"precision: expected 'fp32' or 'bf16', got {precision!r}")
    training = _parse_training(raw)
    if training.token_budget is not None:
        _positive("training.token_budget", training.token_budget)
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
        curriculum=_parse_curriculum(raw, batch),
        training=training,
        reporter=_parse_reporter(raw),
        extra=extra,
    )


def load_run_config(run_dir: str | Path) -> RunConfig:
    path = Path(run_dir) / "run.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"run.json: not found at {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"run.json: invalid JSON ({exc})") from None
    return parse_run_config(raw)


def expected_total_steps(token_budget: int, tokens_per_step: int) -> int:
    return math.ceil(token_budget / tokens_per_step)


def load_capabilities() -> dict:
    """The reference trainer's declaration of the layouts it runs (the parallel.* rules above read it)."""
    return json.loads(CAPABILITIES_PATH.read_text())
