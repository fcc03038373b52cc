"""Plain decoding: sample the next token from logits, and generate with the per-layer decoding
state (KV caches for attention, recurrent states for Mamba2/KDA), so each new token costs one
token's work. Compute modes decode through adamba/model/elastic_runner.py, which uses the same
sampler."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from adamba.model.lm import LM


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Next token ids [B] from last-position logits [B, V]: greedy at temperature <= 0, else
    softmax sampling over the top_k most likely tokens."""
    if temperature <= 0:
        return logits.argmax(-1)
    lg = logits.float() / temperature
    if top_k:
        kth = torch.topk(lg, min(top_k, lg.shape[-1])).values[:, -1:]
        lg = lg.masked_fill(lg < kth, float("-inf"))
    return torch.multinomial(F.softmax(lg, -1), 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: LM,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    stop_ids: set[int] | None = None,
    generator: torch.Generator | None = None,
):
    """Yield new token ids [B] one at a time: prefill the prompt idx [B, T] once, then decode with
    the per-layer state so each step costs one token's work; stops early when every row drew a
    token of `stop_ids`."""
    state = model.init_state(idx.shape[0])
    logits, _ = model(idx, state=state)
    logits = logits[:, -1]
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, generator)
        yield nxt
        if stop_ids and all(int(t) in stop_ids for t in nxt):
            return
        logits, _ = model(nxt[:, None], state=state)
        logits = logits[:, -1]
