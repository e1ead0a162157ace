"""Choosing the next token for each row of a decode step, every row with its own sampling settings.

Greedy rows (temperature 0, or top_k 1) take the argmax. Sampled rows are handled together: temperature, then top-k
and top-p on the sorted distribution, then one draw per row by the exponential race (argmax of p / E with
E ~ Exp(1), the same distribution as a multinomial draw). A request with a seed draws its noise from its own
generator, so its output does not depend on which other requests share the batch (up to floating-point
differences between batch sizes); unseeded requests share the engine's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 or -1: off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def sample_rows(*, logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None],
                default_generator: torch.Generator) -> list[int]:  # fmt: skip
    """logits: [n, vocab], row i for params[i]; returns one token id per row."""
    greedy = logits.argmax(dim=-1)
    sampled = [i for i, p in enumerate(params) if not p.greedy]
    if not sampled:
        return greedy.tolist()
    device = logits.device
    n, vocab = len(sampled), logits.shape[-1]
    rows = torch.tensor(sampled, device=device)
    temps = torch.tensor([params[i].temperature for i in sampled], device=device, dtype=torch.float32)
    scores = logits.index_select(0, rows).float() / temps.unsqueeze(1)
    sorted_scores, order = scores.sort(dim=-1, descending=True)
    top_k = [params[i].top_k if params[i].top_k > 0 else vocab for i in sampled]
    if min(top_k) < vocab:
        ranks = torch.arange(vocab, device=device).unsqueeze(0)
        keep_k = ranks < torch.tensor(top_k, device=device).unsqueeze(1)
        sorted_scores = sorted_scores.masked_fill(~keep_k, float("-inf"))
    probs = torch.softmax(sorted_scores, dim=-1)
    top_p = [params[i].top_p for i in sampled]
    if min(top_p) < 1.0:
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above; the first is always kept
        drop = before >= torch.tensor(top_p, device=device).unsqueeze(1)
        probs = probs.masked_fill(drop, 0.0)
    noise = torch.empty((n, vocab), device=device)
    shared = [j for j, i in enumerate(sampled) if generators[i] is None]
    if shared:
        noise[shared] = torch.rand((len(shared), vocab), device=device, generator=default_generator)
    for j, i in enumerate(sampled):
        if generators[i] is not None:
            noise[j] = torch.rand(vocab, device=device, generator=generators[i])
    race = probs / (-torch.log(noise.clamp_min(1e-20)))
    chosen = order.gather(1, race.argmax(dim=-1, keepdim=True)).squeeze(1)
    out = greedy.clone()
    out[rows] = chosen
    return out.tolist()
