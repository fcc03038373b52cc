"""Continuous batching: sequences join and leave a decoding batch between steps, and every step
is one forward pass for all of them, so concurrent requests share the weights' memory traffic.

A joining sequence is prefilled alone (batch 1, the plain path); its per-layer state is then
appended to the batch: Mamba2 / KDA states are fixed-size and simply stack; attention keys and
values go into a PaddedKV (adamba/model/cache.py), right-aligned with the other rows and masked
where a row is shorter. Each row then decodes exactly as it would alone (tests/model/
test_batch_decode.py checks greedy tokens equal single-sequence decoding for A, M and K layers).
The caller samples: each row may have its own temperature, top-k/top-p and seed.
"""

from __future__ import annotations

import dataclasses

import torch

from adamba.model.cache import KVCache, PaddedKV
from adamba.model.lm import LM


def _stack(a, b):
    """Append state b's rows to state a (same layer)."""
    if isinstance(a, PaddedKV):
        a.join(b)
        return a
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, torch.Tensor):
            setattr(a, f.name, torch.cat([x, y]))
        elif f.name == "length":
            setattr(a, f.name, max(x, y))
    return a


def _keep(state, rows: torch.Tensor) -> None:
    if isinstance(state, PaddedKV):
        state.keep(rows)
        return
    for f in dataclasses.fields(state):
        x = getattr(state, f.name)
        if isinstance(x, torch.Tensor):
            setattr(state, f.name, x[rows])


class BatchDecoder:
    """The rows decoding together. `add` prefills a sequence and returns its next-token logits;
    `step` feeds one token per row and returns every row's next logits; `remove` drops rows.
    Row order is join order, kept by removals (the caller's bookkeeping follows `ids`)."""

    def __init__(self, model: LM):
        self.model = model
        self.state: list | None = None
        self.ids: list[int] = []  # the caller's id per row
        self.lengths: list[int] = []  # tokens each row has seen

    def __len__(self) -> int:
        return len(self.ids)

    @torch.no_grad()
    def add(self, row_id: int, tokens: list[int]) -> torch.Tensor:
        """Prefill `tokens` as a new row; returns its next-token logits [V]."""
        p = next(self.model.parameters())
        idx = torch.tensor([tokens], dtype=torch.long, device=p.device)
        state = self.model.init_state(1)
        logits, _ = self.model(idx, state=state)
        state = [PaddedKV.from_cache(s) if isinstance(s, KVCache) else s for s in state]
        self.state = state if self.state is None else [_stack(a, b) for a, b in zip(self.state, state)]
        self.ids.append(row_id)
        self.lengths.append(len(tokens))
        return logits[0, -1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """One token per row [B] in; next-token logits [B, V] out."""
        logits, _ = self.model(tokens.view(-1, 1), state=self.state)
        self.lengths = [n + 1 for n in self.lengths]
        return logits[:, -1]

    def remove(self, row_ids: set[int]) -> None:
        keep = [i for i, r in enumerate(self.ids) if r not in row_ids]
        if len(keep) == len(self.ids):
            return
        if not keep:
            self.state, self.ids, self.lengths = None, [], []
            return
        rows = torch.tensor(keep, device=next(self.model.parameters()).device)
        for s in self.state:
            _keep(s, rows)
        self.ids = [self.ids[i] for i in keep]
        self.lengths = [self.lengths[i] for i in keep]
