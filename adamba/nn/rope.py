"""Rotary position embedding in the rotate-half layout (the Llama / Hugging Face convention),
so imported and exported checkpoints need no permutation of q/k weights.

YaRN (Peng et al. 2023, as GPT-OSS uses it): the low-frequency channels, whose wavelength exceeds
the pretraining context, are interpolated (frequency / factor), the high-frequency ones kept, with
a linear ramp between the two; cos and sin are scaled by the attention factor (0.1 ln(factor) + 1
unless given), which scales every attention logit by its square. `yarn_inv_freq` follows
transformers' `_compute_yarn_parameters` operation for operation, so the tables are identical
(tests/nn/test_gpt_oss_attention.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Yarn:
    """YaRN's settings (transformers' rope_parameters of rope_type "yarn")."""

    factor: float
    original_max: int  # original_max_position_embeddings: the pretraining context
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    attention_factor: float = 0.0  # 0: 0.1 ln(factor) + 1 (1 for factor <= 1)


def yarn_inv_freq(head_dim: int, theta: float, y: Yarn) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim / 2], cos/sin scale) of YaRN."""
    dim = head_dim
    scale = y.attention_factor or (0.1 * math.log(y.factor) + 1.0 if y.factor > 1 else 1.0)

    def correction_dim(rotations: float) -> float:
        """The channel whose wavelength fits `rotations` turns in the original context."""
        return (dim * math.log(y.original_max / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction_dim(y.beta_fast), correction_dim(y.beta_slow)
    if y.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no division by zero
    pos_freqs = theta ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (y.factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: the channel keeps its frequency (extrapolates), 0: interpolated
    return interpolation * (1 - keep) + extrapolation * keep, scale


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float = 10000.0, max_len: int = 1024, yarn: Yarn | None = None):
        super().__init__()
        if yarn is None:
            inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
            self.scale = 1.0
        else:
            inv_freq, self.scale = yarn_inv_freq(head_dim, theta, yarn)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cached_len = 0
        self._build(max_len)

    def _build(self, n: int) -> None:
        t = torch.arange(n, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(t, self.inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.scale != 1.0:
            cos, sin = cos * self.scale, sin * self.scale
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
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
