"""Causal self-attention: GQA, RoPE, QK RMS-norm, PyTorch SDPA, optional sliding window,
and a KV cache for decoding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adamba.config import ModelConfig
from adamba.nn.norm import rms_norm
from adamba.nn.rope import Rotary


@dataclass
class KVState:
    """Keys/values of past tokens, [batch, kv_heads, capacity, head_dim], filled up to `length`.

    The buffer grows by doubling, so appending a token is O(1) amortised instead of a full copy.
    """

    k: torch.Tensor
    v: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, batch: int, kv_heads: int, head_dim: int, device, dtype, capacity: int = 256) -> KVState:
        shape = (batch, kv_heads, capacity, head_dim)
        return cls(
            torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)
        )

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.shape[2]
        need = self.length + T
        if need > self.k.shape[2]:
            cap = max(need, 2 * self.k.shape[2])
            grow = (*self.k.shape[:2], cap - self.k.shape[2], self.k.shape[3])
            self.k = torch.cat([self.k, self.k.new_zeros(grow)], dim=2)
            self.v = torch.cat([self.v, self.v.new_zeros(grow)], dim=2)
        self.k[:, :, self.length : need] = k
        self.v[:, :, self.length : need] = v
        self.length = need
        return self.k[:, :, :need], self.v[:, :, :need]

    def nbytes(self) -> int:
        per = self.k.element_size() * self.k.shape[0] * self.k.shape[1] * self.k.shape[3]
        return 2 * per * self.length


def single_query_pays(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Is `single_query_attention` the faster path: float32 on a CPU, GQA groups of 2+ query
    heads, and at least 64 (row, query head) pairs. Measured (torch 2.13 CPU, 1 thread, head_dim
    16-64, 80 keys): 1.4-2.4x faster than SDPA from 32 rows of 4-8 heads; slower below ~8 rows
    and for one query head per KV head, where SDPA stays."""
    B, H = q.shape[:2]
    return q.device.type == "cpu" and q.dtype == torch.float32 and H > k.shape[1] and B * H >= 64


def single_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for one query per row ([B, H, 1, d] against [B, H_kv, S, d], no
    mask: every cached key is in the past): each KV head's group of query heads is the M
    dimension of one matmul, so K/V are read once per group and never repeated."""
    B, H, _, d = q.shape
    Hk = k.shape[1]
    s = torch.matmul(q.reshape(B, Hk, H // Hk, d), k.transpose(-1, -2)) * d**-0.5
    return torch.matmul(s.softmax(-1), v).reshape(B, H, 1, d)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        a = cfg.attn
        self.n_head, self.n_kv_head, self.head_dim = a.n_head, a.n_kv_head, a.head_dim
        self.window = a.window
        d = cfg.d_model
        # q, k, v in one matmul: rows [q heads | k heads | v heads] (one GEMM is faster on CPU)
        self.q_dim, self.kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.qkv_proj = nn.Linear(d, self.q_dim + 2 * self.kv_dim, bias=False)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=False)
        self.qk_norm = a.qk_norm
        if a.qk_norm:
            self.q_norm_weight = nn.Parameter(torch.ones(self.head_dim))
            self.k_norm_weight = nn.Parameter(torch.ones(self.head_dim))
        self.eps = cfg.norm_eps
        self.rotary = Rotary(self.head_dim, a.rope_theta, cfg.max_seq_len) if a.use_rope else None

    def init_state(self, batch: int, device, dtype) -> KVState:
        return KVState.empty(batch, self.n_kv_head, self.head_dim, device, dtype)

    def _mask(self, T: int, S: int, device) -> torch.Tensor | None:
        """Boolean mask [T, S] (True = attend) for T queries at the end of S keys; None when
        plain causal SDPA suffices."""
        if self.window <= 0 and T == S:
            return None
        q_pos = torch.arange(S - T, S, device=device)[:, None]
        k_pos = torch.arange(S, device=device)[None, :]
        mask = k_pos <= q_pos
        if self.window > 0:
            mask = mask & (k_pos > q_pos - self.window)
        return mask

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Causal attention of T queries at the end of S keys (GQA: query head i reads KV head
        i // (heads / kv_heads)). One query per row on a CPU, where SDPA's kernel is slow for
        many (row, KV head) pairs, takes grouped matmuls instead (`single_query_attention`)."""
        T, S = q.shape[2], k.shape[2]
        if T == 1 and single_query_pays(q, k):
            if 0 < self.window < S:  # the window: the last `window` keys
                k, v = k[:, :, -self.window :], v[:, :, -self.window :]
            return single_query_attention(q, k, v)
        mask = self._mask(T, S, q.device)
        gqa = q.shape[1] != k.shape[1]
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)

    def heads_at(self, width: float) -> tuple[int, int]:
        """(query heads, KV heads) kept at a Matryoshka width: the first round(w * n_head) query
        heads (at least 1) and the KV heads their GQA groups read (query head i reads KV head
        i // group). Prefixes at every width, so a key cached for KV head h is the same at every
        width (see adamba/model/elastic.py)."""
        if width >= 1.0:
            return self.n_head, self.n_kv_head
        group = self.n_head // self.n_kv_head
        hq = min(self.n_head, max(1, round(width * self.n_head)))
        return hq, -(-hq // group)

    def forward(
        self,
        x: torch.Tensor,
        state: KVState | None = None,
        width: float = 1.0,
        row_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """row_mask: [B, heads at this width, 1, 1] of 0/1, zeroing a row's heads past its own
        (narrower) width before the output projection, so rows of several widths share one
        pass (batched auto decoding)."""
        if width < 1.0 or row_mask is not None:
            return self._forward_narrow(x, state, width, row_mask)
        B, T, _ = x.shape
        q, k, v = self.qkv_proj(x).split([self.q_dim, self.kv_dim, self.kv_dim], dim=-1)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.qk_norm:
            q = rms_norm(q, self.q_norm_weight, self.eps)
            k = rms_norm(k, self.k_norm_weight, self.eps)
        offset = state.length if state is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if state is not None:
            k, v = state.append(k, v)
        y = self._attend(q, k, v)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))

    def _forward_narrow(
        self, x: torch.Tensor, state, width: float, row_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Attention over the first heads only, with weight views (no copies). A cache may ask
        for K/V of more heads than this width reads (it stores the widest width seen so far)."""
        B, T, _ = x.shape
        hd, group = self.head_dim, self.n_head // self.n_kv_head
        hq, hkv = self.heads_at(width)
        if state is None:
            n_store = hkv
        elif hasattr(state, "heads_for"):  # MatryoshkaKVCache
            n_store = state.heads_for(hkv)
        else:  # a plain KVState holds every KV head
            n_store = self.n_kv_head
        w = self.qkv_proj.weight
        kq, kk = self.q_dim, self.q_dim + self.kv_dim
        q = F.linear(x, w[: hq * hd]).view(B, T, hq, hd).transpose(1, 2)
        k = F.linear(x, w[kq : kq + n_store * hd]).view(B, T, n_store, hd).transpose(1, 2)
        v = F.linear(x, w[kk : kk + n_store * hd]).view(B, T, n_store, hd).transpose(1, 2)
        if self.qk_norm:
            q = rms_norm(q, self.q_norm_weight, self.eps)
            k = rms_norm(k, self.k_norm_weight, self.eps)
        offset = state.length if state is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if state is not None:
            k, v = state.append(k, v)
        k, v = k[:, :hkv], v[:, :hkv]
        if hkv > 1 and hq != hkv * group:  # a partial last group: SDPA's i // (hq/hkv) map is wrong
            k = k.repeat_interleave(group, dim=1)[:, :hq]
            v = v.repeat_interleave(group, dim=1)[:, :hq]
        y = self._attend(q, k, v)
        if row_mask is not None:  # a row of a narrower width: its heads past that width give 0
            y = y * row_mask
        return F.linear(y.transpose(1, 2).reshape(B, T, hq * hd), self.o_proj.weight[:, : hq * hd])
