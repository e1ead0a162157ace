"""Pipeline parallelism: the reference model cut into DeepSpeed ``PipelineModule`` stages (1F1B schedule).

The layer list is [embedding, decoder layer 0 .. L-1, final norm + lm_head]; DeepSpeed splits it into ``pp`` stages
with an equal number of decoder layers each (``partition_method="type:DecoderLayerPipe"``) and runs its 1F1B
schedule over ``batch.grad_accum`` micro-batches per optimizer step. Between stages travel the hidden state and
the running sum of the MoE balance losses (a tensor kept attached to the graph, so that DeepSpeed has a gradient
to send back for it). The loss function on the last stage adds ``aux_loss_coef`` times that sum to the
vocabulary-parallel cross-entropy, as the unpipelined trainer does.

The wrapped modules are those of a ``Transformer`` built as usual (same initial weights for every layout).
Checkpoints are DeepSpeed's per-layer files ``layer_XX-model_YY-model_states.pt``; ``LAYER_PREFIX`` maps a layer's
index to the Transformer's parameter names so that the exporter merges them into the usual state dict.
"""

from __future__ import annotations

import torch
from torch import nn

from jobs.train.model import Transformer


class EmbedPipe(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.embed_tokens = model.embed_tokens

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.embed_tokens(ids)
        # Zero, but on the graph: the balance loss added by later stages sends a gradient back through it.
        return x, (x.sum() * 0.0).reshape(1).float()


class DecoderLayerPipe(nn.Module):
    def __init__(self, model: Transformer, index: int) -> None:
        super().__init__()
        self.layer = model.layers[index]
        self.rotary = model.rotary
        # With sequence parallelism x holds T/tp positions; attention needs the tables of the whole sequence.
        self.seq_factor = model.tp.size if model.tp.sp else 1
        self.activation_checkpointing = model.activation_checkpointing

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, aux = inputs
        cos, sin = self.rotary(x.shape[1] * self.seq_factor)
        if self.activation_checkpointing and self.training:
            from torch.utils.checkpoint import checkpoint

            x, layer_aux, _ = checkpoint(self.layer, x, cos, sin, use_reentrant=False)
        else:
            x, layer_aux, _ = self.layer(x, cos, sin)
        if layer_aux is not None:
            aux = aux + layer_aux.float().reshape(1)
        return x, aux


class HeadPipe(nn.Module):
    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.norm = model.norm
        self.lm_head = model.lm_head
        self.tp = model.tp

    def forward(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x, aux = inputs
        return self.lm_head(self.tp.gather_seq(self.norm(x))), aux


def _layer_key(index: int, num_layers: int, key: str) -> str:
    if 1 <= index <= num_layers:
        return f"layers.{index - 1}.{key.removeprefix('layer.')}"
    return key


def merge_pipeline_layers(files: dict[int, dict[str, torch.Tensor]], num_layers: int) -> dict[str, torch.Tensor]:
    """{pipeline layer index: that layer's state dict} -> the Transformer's state dict (rotary buffers excluded)."""
    out = {}
    for index, state in files.items():
        for key, tensor in state.items():
            out[_layer_key(index, num_layers, key)] = tensor
    return out


def build_pipeline(model: Transformer, *, pp: int, topology, aux_coef: float):
    """The DeepSpeed PipelineModule of ``model`` over ``pp`` stages of ``topology``; its ``ce_values`` list collects
    the last stage's per-micro-batch cross-entropy (the trainer empties it every step)."""
    from deepspeed.pipe import PipelineModule

    ce_values: list[torch.Tensor] = []

    def loss_fn(outputs: tuple[torch.Tensor, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        logits, aux = outputs
        ce = model.token_losses(logits, targets).mean()
        # The cross-entropy alone is what the trainer reports as the loss (as without pipeline parallelism).
        ce_values.append(ce.detach())
        return ce + aux_coef * aux.sum() if aux_coef else ce + 0.0 * aux.sum()

    layers: list[nn.Module] = [EmbedPipe(model)]
    layers += [DecoderLayerPipe(model, i) for i in range(len(model.layers))]
    layers.append(HeadPipe(model))
    pipe = PipelineModule(
        layers=layers,
        num_stages=pp,
        topology=topology,
        loss_fn=loss_fn,
        partition_method="type:DecoderLayerPipe",  # balanced: stages differ by at most one layer
        # The curriculum changes the sequence length between steps: shapes are sent with every micro-batch.
        dynamic_shape=True,
    )
    pipe.ce_values = ce_values
    return pipe
