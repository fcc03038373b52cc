"""Rotary position embedding in the rotate-half layout (the Llama / Hugging Face convention),
so imported and exported checkpoints need no permutation of q/k weights."""

import torch
from torch import nn


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float = 10000.0, max_len: int = 1024):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cached_len = 0
        self._build(max_len)

    def _build(self, n: int) -> None:
        t = torch.arange(n, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)
        self._cached_len = n

    def forward(self, x: torch.Tensor, offset: int | torch.Tensor = 0) -> torch.Tensor:
        """x: [batch, heads, seq, head_dim]; positions offset..offset+seq-1, where `offset` is an
        int, or a tensor [batch] of each row's own offset (rows of different lengths decoding
        together)."""
        T = x.shape[-2]
        end = (int(offset.max()) if isinstance(offset, torch.Tensor) else offset) + T
        if end > self._cached_len:
            self._build(max(end, 2 * self._cached_len))
        if isinstance(offset, torch.Tensor):
            pos = offset[:, None] + torch.arange(T, device=offset.device)  # [batch, T]
            cos = self.cos[pos][:, None].to(x.dtype)  # [batch, 1, T, head_dim]
            sin = self.sin[pos][:, None].to(x.dtype)
        else:
            cos = self.cos[offset : offset + T].to(x.dtype)
            sin = self.sin[offset : offset + T].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        rot = torch.cat([-x2, x1], dim=-1)
        return x * cos + rot * sin
