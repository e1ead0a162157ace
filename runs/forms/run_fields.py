"""The run form's config fields: one line each, keyed by their dotted path in the frozen config."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from django import forms


@dataclass(frozen=True)
class ConfigField:
    path: str
    label: str
    kind: str  # int | float | bool | choice
    help: str = ""
    choices: tuple[tuple[str, str], ...] = ()
    min_value: float | None = None
    max_value: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    optional: bool = False  # left empty, the config keeps its value or its schema default

    @property
    def name(self) -> str:
        return self.path.replace(".", "__")

    def build(self) -> forms.Field:
        common: dict[str, Any] = {"label": self.label, "help_text": self.help}
        if self.kind == "args":
            return ArgsField(required=False, **common)
        if self.optional:
            numeric = all(value.isdigit() for value, _ in self.choices)
            return forms.TypedChoiceField(
                choices=self.choices, coerce=int if numeric else str, required=False, empty_value=None, **common
            )
        if self.kind == "int":
            lo = None if self.min_value is None else int(self.min_value)
            hi = None if self.max_value is None else int(self.max_value)
            return forms.IntegerField(min_value=lo, max_value=hi, **common)
        if self.kind == "float":
            return forms.FloatField(min_value=self.min_value, max_value=self.max_value, **common)
        if self.kind == "bool":
            return forms.BooleanField(required=False, **common)
        numeric = all(value.isdigit() for value, _ in self.choices)
        return forms.TypedChoiceField(choices=self.choices, coerce=int if numeric else str, **common)


class ArgsField(forms.Field):
    """A command line's arguments typed as a shell would split them; the config keeps the list."""

    widget = forms.TextInput
    MAX_CHARS = 4000

    def prepare_value(self, value: Any) -> Any:
        return shlex.join(value) if isinstance(value, (list, tuple)) else value

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        text = str(value or "").strip()
        if len(text) > self.MAX_CHARS:
            raise forms.ValidationError(f"at most {self.MAX_CHARS} characters; pass long settings in a file")
        if "\0" in text:
            raise forms.ValidationError("remove the NUL character")
        try:
            return shlex.split(text)
        except ValueError as exc:
            raise forms.ValidationError(
                f"{exc}: close every quote, e.g. --output_dir out --run_name 'my run'"
            ) from None


# The remediation policy is kept with the run and carried out by the control plane (runs.services.remediation).
_POLICY_ONLY = (
    "The control plane relaunches by itself: after an OOM from the last checkpoint with the next remedy, after a "
    "hang or lost job from the last checkpoint, and (with rollback) after a loss spike or NaN from an earlier "
    "checkpoint, skipping the data that caused it. Each relaunch is alerted, audited and shown on the run page."
)

GROUPS: list[tuple[str, list[ConfigField]]] = [
    (
        "Model",
        [
            ConfigField(
                "model.arch", "Architecture", "choice", choices=(("moe", "Mixture of experts"), ("dense", "Dense"))
            ),
            ConfigField(
                "model.attention",
                "Attention",
                "choice",
                choices=(("mla", "Multi-head latent attention"), ("mha", "Multi-head attention")),
            ),
            ConfigField("model.num_layers", "Layers", "int", min_value=1, max_value=512),
            ConfigField("model.hidden_size", "Hidden size", "int", min_value=8, max_value=65536),
            ConfigField("model.num_heads", "Attention heads", "int", min_value=1, max_value=1024),
            ConfigField("model.vocab_size", "Vocabulary", "int", min_value=32, max_value=1_000_000),
            ConfigField("model.max_seq_len", "Max sequence length", "int", min_value=8, max_value=1_048_576),
            ConfigField("model.q_lora_rank", "Query LoRA rank (MLA, 0 = none)", "int", min_value=0, max_value=65536),
            ConfigField("model.kv_lora_rank", "KV LoRA rank (MLA)", "int", min_value=1, max_value=65536),
            ConfigField("model.qk_nope_head_dim", "QK no-rope head dim", "int", min_value=1, max_value=1024),
            ConfigField("model.qk_rope_head_dim", "QK rope head dim", "int", min_value=0, max_value=1024),
            ConfigField("model.v_head_dim", "Value head dim", "int", min_value=1, max_value=1024),
            ConfigField("model.intermediate_size", "Dense MLP width", "int", min_value=1, max_value=1_000_000),
            ConfigField("model.moe_intermediate_size", "Expert MLP width", "int", min_value=1, max_value=1_000_000),
            ConfigField("model.num_routed_experts", "Routed experts", "int", min_value=0, max_value=4096),
            ConfigField("model.num_shared_experts", "Shared experts", "int", min_value=0, max_value=64),
            ConfigField("model.top_k", "Experts per token (top-k)", "int", min_value=1, max_value=64),
            ConfigField("model.first_k_dense", "Leading dense layers", "int", min_value=0, max_value=512),
        ],
    ),
    (
        "Parallel layout",
        [
            ConfigField("parallel.tp", "Tensor parallel", "int", min_value=1, max_value=64),
            ConfigField("parallel.pp", "Pipeline parallel", "int", min_value=1, max_value=512),
            ConfigField("parallel.ep", "Expert parallel", "int", min_value=1, max_value=4096),
            ConfigField("parallel.sp", "Sequence parallel", "bool"),
            ConfigField(
                "parallel.zero_stage",
                "ZeRO stage",
                "choice",
                choices=(
                    ("0", "0 (none)"),
                    ("1", "1 optimizer states"),
                    ("2", "2 + gradients"),
                    ("3", "3 + parameters"),
                ),
            ),
            ConfigField("parallel.offload_optimizer", "Offload optimizer to CPU (ZeRO-Offload)", "bool"),
            ConfigField("parallel.offload_param", "Offload parameters to CPU (ZeRO-3)", "bool"),
            ConfigField("parallel.activation_checkpointing", "Activation checkpointing", "bool"),
        ],
    ),
    (
        "Batch",
        [
            ConfigField("batch.global_batch_tokens", "Global batch (tokens per step)", "int", min_value=1),
            ConfigField("batch.micro_batch", "Micro-batch (sequences per GPU)", "int", min_value=1, max_value=65536),
            ConfigField("batch.grad_accum", "Gradient accumulation", "int", min_value=1, max_value=65536),
            ConfigField("batch.seq_len", "Sequence length (final stage)", "int", min_value=8, max_value=1_048_576),
            ConfigField("batch.tolerance_pct", "Batch tolerance (%)", "float", min_value=0, max_value=50),
        ],
    ),
    (
        "Optimizer and schedule",
        [
            ConfigField("optimizer.lr", "Peak learning rate", "float", min_value=0),
            ConfigField("optimizer.min_lr", "Final learning rate", "float", min_value=0),
            ConfigField("optimizer.warmup_steps", "Warm-up steps", "int", min_value=0),
            ConfigField(
                "optimizer.schedule",
                "Schedule",
                "choice",
                choices=(("cosine", "Warm-up + cosine"), ("constant", "Warm-up + constant")),
            ),
            ConfigField("optimizer.weight_decay", "Weight decay", "float", min_value=0, max_value=1),
            ConfigField("optimizer.grad_clip", "Gradient clipping", "float", min_value=0),
            ConfigField("precision", "Precision", "choice", choices=(("bf16", "bf16"), ("fp32", "fp32"))),
        ],
    ),
    (
        "Training",
        [
            ConfigField("training.token_budget", "Token budget", "int", min_value=1),
            ConfigField("training.checkpoint_interval", "Checkpoint every (steps)", "int", min_value=1),
            ConfigField("training.keep_checkpoints", "Checkpoints kept", "int", min_value=1, max_value=1000),
            ConfigField("training.keep_every", "Also keep every Nth step (0 = none)", "int", min_value=0),
            ConfigField("training.seed", "Seed", "int", min_value=0, max_value=2**31 - 1),
            ConfigField(
                "training.nan_policy",
                "On NaN/Inf loss",
                "choice",
                choices=(("abort", "Abort the job"), ("skip", "Skip the batch")),
            ),
        ],
    ),
    (
        "Own script",
        [
            ConfigField(
                "own_script.ds_config_arg",
                "Pass the DeepSpeed config as",
                "choice",
                help="How your script expects RUN_DIR/ds_config.json; CP_DS_CONFIG holds its path in every case.",
                choices=(
                    ("--deepspeed_config", "--deepspeed_config PATH (DeepSpeed tutorials)"),
                    ("--deepspeed", "--deepspeed PATH (Hugging Face scripts)"),
                    ("env", "the CP_DS_CONFIG variable only"),
                ),
                optional=True,
            ),
            ConfigField(
                "own_script.ds_config_style",
                "DeepSpeed config",
                "choice",
                help='For the Hugging Face Trainer: "auto" where it fills values from its own arguments.',
                choices=(
                    ("deepspeed", "every number from this form"),
                    ("hf", 'Hugging Face Trainer ("auto" values)'),
                ),
                optional=True,
            ),
            ConfigField(
                "own_script.args",
                "Script arguments",
                "args",
                help="Your script's own arguments, as on a command line: --model_name_or_path gpt2 --output_dir out",
            ),
        ],
    ),
    (
        "Alerts and remediation",
        [
            ConfigField("alerts.loss_spike_z", "Loss spike threshold (robust z)", "float", min_value=1, max_value=100),
            ConfigField("alerts.grad_norm_max", "Grad-norm ceiling", "float", min_value=0),
            ConfigField("alerts.hang_timeout_s", "Hang timeout (s)", "int", min_value=10, max_value=86400),
            ConfigField("alerts.throughput_drop_pct", "Throughput drop alert (%)", "float", min_value=1, max_value=100),
            ConfigField(
                "remediation.max_attempts",
                "Automatic relaunches at most",
                "int",
                help=_POLICY_ONLY,
                min_value=0,
                max_value=10,
            ),
            ConfigField(
                "remediation.on_spike",
                "On loss spike / NaN",
                "choice",
                help=_POLICY_ONLY,
                choices=(("alert", "Alert only"), ("rollback", "Roll back to the last good checkpoint")),
            ),
        ],
    ),
]

ALL_FIELDS: list[ConfigField] = [f for _, fields in GROUPS for f in fields]
BY_PATH: dict[str, ConfigField] = {f.path: f for f in ALL_FIELDS}
