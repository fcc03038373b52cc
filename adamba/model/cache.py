"""MatryoshkaKVCache: one attention layer's keys/values, kept only for the KV heads in use.

A narrow width reads a prefix of the KV heads (Attention.heads_at), and a key of head h does not
depend on the width, so one buffer serves every width at or below the widest one stored: a
narrower query slices the head prefix; nothing is padded up. The stored width only grows while
the cache is empty: once tokens are in it, later tokens keep computing K/V for the stored heads
(so a wider query of the same run never meets a hole). Decoders that may widen a layer later
(auto mode's expansion) reserve that width up front with `reserve_heads`.
"""

from __future__ import annotations

import torch

from adamba.errors import AdambaError


class MatryoshkaKVCache:
    """Keys/values [batch, heads_stored, capacity, head_dim], filled up to `length`."""

    def __init__(self, batch: int, max_heads: int, head_dim: int, device, dtype, capacity: int = 256):
        self.batch, self.max_heads, self.head_dim = batch, max_heads, head_dim
        self.device, self.dtype, self.capacity = device, dtype, capacity
        self.heads = 0
        self.length = 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def reserve_heads(self, n: int) -> None:
        """Store at least n heads from now on (only possible before the first token)."""
        if n > self.heads and self.length > 0:
            raise AdambaError(
                f"KV cache holds {self.length} tokens at {self.heads} heads; it cannot widen to {n} "
                "(reserve the widest width before prefill)"
            )
        self.heads = min(self.max_heads, max(self.heads, n))

    def heads_for(self, n: int) -> int:
        """How many heads the layer must compute K/V for, so a query reading n heads is served:
        the widest stored width (an empty cache grows to n)."""
        if n > self.heads:
            self.reserve_heads(n)
        return self.heads

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append K/V of `heads` heads for T new tokens; return all stored keys/values."""
        if k.shape[1] > self.heads:  # the full-width path appends every head without asking
            self.reserve_heads(k.shape[1])
        if k.shape[1] != self.heads:
            raise ValueError(f"append got {k.shape[1]} heads, cache stores {self.heads}")
        T = k.shape[2]
        need = self.length + T
        if self.k is None:
            cap = max(need, self.capacity)
            shape = (self.batch, self.heads, cap, self.head_dim)
            self.k = torch.zeros(shape, device=self.device, dtype=self.dtype)
            self.v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        elif need > self.k.shape[2]:
            cap = max(need, 2 * self.k.shape[2])
            grow = (self.batch, self.heads, cap - self.k.shape[2], self.head_dim)
            self.k = torch.cat([self.k, self.k.new_zeros(grow)], dim=2)
            self.v = torch.cat([self.v, self.v.new_zeros(grow)], dim=2)
        self.k[:, :, self.length : need] = k
        self.v[:, :, self.length : need] = v
        self.length = need
        return self.k[:, :, :need], self.v[:, :, :need]

    def nbytes(self) -> int:
        """Bytes of the filled part (keys + values)."""
        return 2 * self.batch * self.heads * self.length * self.head_dim * torch.finfo(self.dtype).bits // 8

    def full_nbytes(self) -> int:
        """What a plain full-width cache would hold for the same tokens."""
        return (
            2 * self.batch * self.max_heads * self.length * self.head_dim * torch.finfo(self.dtype).bits // 8
        )
