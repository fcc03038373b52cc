"""KVCache: one attention layer's keys/values for decoding, the one cache type every decoder uses
(plain generation, compute modes, batched adaptive decoding). Mamba2 and KDA layers keep their
fixed-size recurrent states in their own files (adamba/nn/mamba2.py, kda.py).

The buffer grows by doubling, so appending a token is O(1) amortised. It keeps only the KV heads
in use (Matryoshka widths): a narrow width reads a prefix of the KV heads (Attention.heads_at),
and a key of head h does not depend on the width, so one buffer serves every width at or below
the widest one stored: a narrower query slices the head prefix; nothing is padded up. The
stored width only grows while the cache is empty: once tokens are in it, later tokens keep
computing K/V for the stored heads (so a wider query of the same run never meets a hole).
Plain decoding stores every head (`LM.init_state`); decoders that may widen a layer later (auto
mode's expansion) reserve that width up front with `reserve_heads`.
"""

from __future__ import annotations

import torch

from adamba.errors import AdambaError


class KVCache:
    """Keys/values [batch, heads_stored, capacity, head_dim], filled up to `length`; `heads` KV
    heads reserved from the start (0: as many as the first query reads)."""

    def __init__(
        self, batch: int, max_heads: int, head_dim: int, device, dtype, capacity: int = 256, heads: int = 0
    ):
        self.batch, self.max_heads, self.head_dim = batch, max_heads, head_dim
        self.device, self.dtype, self.capacity = device, dtype, capacity
        self.heads = 0
        self.length = 0
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.reserve_heads(heads)

    def reserve_heads(self, n: int) -> None:
        """Store at least n heads from now on (only possible before the first token)."""
        if n > self.heads and (self.length > 0 or self.k is not None):
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
        out = self.write_rows(None, k, v)
        self.length += k.shape[2]
        return out

    def write_rows(self, rows: torch.Tensor | None, k: torch.Tensor, v: torch.Tensor):
        """Write K/V [len(rows), heads, T, head_dim] for the next T positions of some rows (None =
        every row) without advancing `length`; return those rows' keys/values up to the new end.
        Batched adaptive decoding runs a layer on row subsets (exited rows, width groups): each
        writes its rows, then `advance` moves every row on together."""
        if k.shape[1] > self.heads:  # the full-width path appends every head without asking
            self.reserve_heads(k.shape[1])
        if k.shape[1] != self.heads:
            raise ValueError(f"append got {k.shape[1]} heads, cache stores {self.heads}")
        need = self.length + k.shape[2]
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
        if rows is None:
            self.k[:, :, self.length : need] = k
            self.v[:, :, self.length : need] = v
            return self.k[:, :, :need], self.v[:, :, :need]
        self.k[rows, :, self.length : need] = k
        self.v[rows, :, self.length : need] = v
        return self.k[rows, :, :need], self.v[rows, :, :need]

    def advance(self, T: int) -> None:
        """Move every row on by T positions (after `write_rows` filled them all)."""
        self.length += T

    def nbytes(self) -> int:
        """Bytes of the filled part (keys + values)."""
        return 2 * self.batch * self.heads * self.length * self.head_dim * torch.finfo(self.dtype).bits // 8

    def full_nbytes(self) -> int:
        """What a plain full-width cache would hold for the same tokens."""
        return (
            2 * self.batch * self.max_heads * self.length * self.head_dim * torch.finfo(self.dtype).bits // 8
        )


class RowView:
    """Some rows of a KVCache (None: all), as an attention layer sees a cache: `length`,
    `heads_for`, `append` (which writes these rows only and leaves the advance to the caller:
    batched adaptive decoding runs a layer on several row groups, then advances once)."""

    def __init__(self, cache: KVCache, rows: torch.Tensor | None):
        self.cache, self.rows = cache, rows

    @property
    def length(self) -> int:
        return self.cache.length

    def heads_for(self, n: int) -> int:
        return self.cache.heads_for(n)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cache.write_rows(self.rows, k, v)


class PaddedKV:
    """One attention layer's keys/values for rows of different lengths decoding together
    (continuous batching, adamba/model/batch_decode.py): [batch, heads, L, head_dim], each row's
    tokens right-aligned, row r's first `pad[r]` slots empty and masked out (`key_mask`).

    All rows write their next token at slot L, rotated at the row's own position (`positions`),
    so each row attends exactly as it would alone. Rows are prefilled alone into a KVCache, then
    joined (`join`); finished rows leave (`keep`), and the columns every row leaves empty are cut."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor, pad: torch.Tensor):
        self.k, self.v, self.pad = k, v, pad  # pad: [batch] long
        self.filled = k.shape[2]

    @classmethod
    def from_cache(cls, cache: KVCache) -> PaddedKV:
        """A one-row PaddedKV of a prefilled KVCache (batch 1)."""
        n = cache.length
        pad = torch.zeros(1, dtype=torch.long, device=cache.device)
        return cls(cache.k[:, :, :n].clone(), cache.v[:, :, :n].clone(), pad)

    @property
    def length(self) -> int:
        return self.filled

    @property
    def positions(self) -> torch.Tensor:
        """[batch]: each row's own position for its next token (its token count): the rotary
        angle its query and key take, so cached keys (rotated at their true positions in the
        prefill) keep their meaning wherever the row sits in the buffer."""
        return self.filled - self.pad

    def heads_for(self, n: int) -> int:
        return self.k.shape[1]

    def key_mask(self) -> torch.Tensor:
        """[batch, 1, 1, L] True where a row has a key."""
        pos = torch.arange(self.filled, device=self.k.device)
        return (pos[None, :] >= self.pad[:, None])[:, None, None, :]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of one new token per row; returns every row's keys/values."""
        need = self.filled + k.shape[2]
        if need > self.k.shape[2]:  # grow by doubling: O(1) amortised per token
            grow = max(need, 2 * self.k.shape[2]) - self.k.shape[2]
            shape = (*self.k.shape[:2], grow, self.k.shape[3])
            self.k = torch.cat([self.k, self.k.new_zeros(shape)], dim=2)
            self.v = torch.cat([self.v, self.v.new_zeros(shape)], dim=2)
        self.k[:, :, self.filled : need] = k
        self.v[:, :, self.filled : need] = v
        self.filled = need
        return self.k[:, :, :need], self.v[:, :, :need]

    def _left_pad(self, n: int) -> None:
        """n more empty slots before every row (the others' tokens move right)."""
        z = self.k.new_zeros((*self.k.shape[:2], n, self.k.shape[3]))
        self.k = torch.cat([z, self.k[:, :, : self.filled]], dim=2)
        self.v = torch.cat([z.clone(), self.v[:, :, : self.filled]], dim=2)
        self.pad = self.pad + n
        self.filled += n

    def join(self, other: PaddedKV) -> None:
        """Append `other`'s rows, right-aligned with these."""
        if other.filled > self.filled:
            self._left_pad(other.filled - self.filled)
        elif other.filled < self.filled:
            other._left_pad(self.filled - other.filled)
        n = self.filled
        self.k = torch.cat([self.k[:, :, :n], other.k[:, :, :n]])
        self.v = torch.cat([self.v[:, :, :n], other.v[:, :, :n]])
        self.pad = torch.cat([self.pad, other.pad])

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices), and cut the leading slots none of them uses."""
        self.pad = self.pad[rows]
        cut = int(self.pad.min()) if len(rows) else self.filled
        self.k = self.k[rows][:, :, cut : self.filled]
        self.v = self.v[rows][:, :, cut : self.filled]
        self.pad = self.pad - cut
        self.filled -= cut
