"""Causal self-attention: GQA, RoPE (plain or YaRN), QK RMS-norm, PyTorch SDPA, optional sliding
window (per layer with attn.window_pattern), optional biases and attention sinks (GPT-OSS), a KV
cache for decoding, and Matryoshka widths (a prefix of the heads).

Attention sinks: a learned logit per head joins the softmax denominator only, p_j = exp(s_j) /
(sum_i exp(s_i) + exp(sink)); the weights no longer sum to 1 (transformers' GptOss eager
attention). SDPA has no such input, so `sink_sdpa` gives it an exact twin: every key gets one more
channel, 1, every query the channel -sink / scale (so each real score drops by `sink`), and a zero
key with a zero value joins the keys (score 0, nothing added to the output): softmax over
[s_j - sink, 0] is the sink formula. It stays one SDPA call (differentiable in q, k, v and the
sinks) with the boolean masks SDPA already takes; tests/nn/test_gpt_oss_attention.py checks it
against the eager formula and against transformers' GptOssAttention.

One projection path (`project`) serves every caller: the full-width forward (one GEMM over
q|k|v), a narrow width (weight-row views of the first heads), and early exit's copy-forward
(`write_kv`: K/V only). The cache type lives in adamba/model/cache.py; attention sees it through
the small `KVStore` protocol."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from adamba.config import ModelConfig
from adamba.nn.norm import rms_norm
from adamba.nn.rope import Rotary, Yarn


class KVStore(Protocol):
    """What attention needs of a decoding cache (adamba/model/cache.py's KVCache, or a RowView of
    some of its rows): the tokens already stored, how many KV heads it keeps for a query that
    reads `n` of them, and an append of K/V for new tokens that returns every stored key/value."""

    @property
    def length(self) -> int: ...

    def heads_for(self, n: int) -> int: ...

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def single_query_pays(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Is `single_query_attention` the faster path: float32 on a CPU, GQA groups of 2+ query
    heads, and at least 64 (row, query head) pairs. Measured (torch 2.13 CPU, 1 thread, head_dim
    16-64, 80 keys): 1.4-2.4x faster than SDPA from 32 rows of 4-8 heads; slower below ~8 rows
    and for one query head per KV head, where SDPA stays."""
    B, H = q.shape[:2]
    return q.device.type == "cpu" and q.dtype == torch.float32 and H > k.shape[1] and B * H >= 64


def single_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v for one query per row ([B, H, 1, d] against [B, H_kv, S, d], no
    mask: every cached key is in the past): each KV head's group of query heads is the M
    dimension of one matmul, so K/V are read once per group and never repeated. `sinks` [H]:
    one more logit per head in the softmax, dropped after it (attention sinks)."""
    B, H, _, d = q.shape
    Hk = k.shape[1]
    s = torch.matmul(q.reshape(B, Hk, H // Hk, d), k.transpose(-1, -2)) * d**-0.5
    if sinks is None:
        return torch.matmul(s.softmax(-1), v).reshape(B, H, 1, d)
    sink = sinks.to(s.dtype).view(1, Hk, H // Hk, 1).expand(B, -1, -1, -1)
    p = torch.cat([s, sink], dim=-1).softmax(-1)[..., :-1]
    return torch.matmul(p, v).reshape(B, H, 1, d)


def sink_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """SDPA with attention sinks (see the module doc): q [B, H, T, d], k/v [B, H_kv, S, d], sinks
    [H], mask: boolean, broadcastable to [B, H, T, S] (True = attend), or None for plain causal
    attention (T == S)."""
    B, H, T, d = q.shape
    S = k.shape[2]
    scale = d**-0.5
    if mask is None:
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    off = (-sinks / scale).to(q.dtype).view(1, H, 1, 1).expand(B, H, T, 1)
    q = torch.cat([q, off], dim=-1)
    k = F.pad(F.pad(k, (0, 1), value=1.0), (0, 0, 0, 1))  # a channel of ones, then the zero key
    v = F.pad(v, (0, 0, 0, 1))  # the zero key's value
    mask = torch.cat([mask, mask.new_ones(*mask.shape[:-1], 1)], dim=-1)  # every query reads it
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )


class Attention(nn.Module):
    PARAM_ROLES = {
        "qkv_proj.weight": "matrix",
        "o_proj.weight": "out",
        "*_norm_weight": "norm",
        "qkv_proj.bias": "bias",
        "o_proj.bias": "bias",
        "sinks": "bias",  # a per-head logit: an offset, not decayed; starts at 0
    }

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        a = cfg.attn
        self.n_head, self.n_kv_head, self.head_dim = a.n_head, a.n_kv_head, a.head_dim
        # this layer's window: attn.window_pattern counts attention layers only
        self.window = a.window_at(cfg.layer_types()[:layer_idx].count("A"))
        d = cfg.d_model
        # q, k, v in one matmul: rows [q heads | k heads | v heads] (one GEMM is faster on CPU)
        self.q_dim, self.kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.qkv_proj = nn.Linear(d, self.q_dim + 2 * self.kv_dim, bias=a.bias)
        self.o_proj = nn.Linear(self.n_head * self.head_dim, d, bias=a.bias)
        if a.bias:  # biases start at 0 (the weights take their role's init in LM.reset_parameters)
            nn.init.zeros_(self.qkv_proj.bias)
            nn.init.zeros_(self.o_proj.bias)
        self.sinks = nn.Parameter(torch.zeros(self.n_head)) if a.sinks else None
        self.qk_norm = a.qk_norm
        if a.qk_norm:
            self.q_norm_weight = nn.Parameter(torch.ones(self.head_dim))
            self.k_norm_weight = nn.Parameter(torch.ones(self.head_dim))
        self.eps = cfg.norm_eps
        self.causal = True  # False: every query reads every key (TRM's bidirectional core over a grid)
        yarn = None
        if a.rope_scaling == "yarn":
            yarn = Yarn(
                a.yarn_factor,
                a.yarn_original_max,
                a.yarn_beta_fast,
                a.yarn_beta_slow,
                a.yarn_truncate,
                a.yarn_attention_factor,
            )
        self.rotary = Rotary(self.head_dim, a.rope_theta, cfg.max_seq_len, yarn) if a.use_rope else None

    def _mask(self, T: int, S: int, device) -> torch.Tensor | None:
        """Boolean mask [T, S] (True = attend) for T queries at the end of S keys; None when
        plain SDPA (causal, or not with `causal` False) suffices."""
        if self.window <= 0 and T == S and (self.causal or self.sinks is None):
            return None
        q_pos = torch.arange(S - T, S, device=device)[:, None]
        k_pos = torch.arange(S, device=device)[None, :]
        mask = k_pos <= q_pos if self.causal else torch.ones_like(k_pos <= q_pos)
        if self.window > 0:  # the `window` nearest keys back (and, non-causal, forward)
            mask = mask & ((k_pos - q_pos).abs() < self.window)
        return mask

    def _attend(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Causal attention of T queries at the end of S keys (GQA: query head i reads KV head
        i // (heads / kv_heads)). One query per row on a CPU, where SDPA's kernel is slow for
        many (row, KV head) pairs, takes grouped matmuls instead (`single_query_attention`).
        key_mask [B, 1, 1, S]: the keys each row has (rows of different lengths batched).
        With sinks, the query heads' own (the first q heads' at a narrow width)."""
        T, S = q.shape[2], k.shape[2]
        sinks = None if self.sinks is None else self.sinks[: q.shape[1]]
        if key_mask is not None:
            mask = self._mask(T, S, q.device)
            mask = key_mask if mask is None else key_mask & mask
            if sinks is not None:
                return sink_sdpa(q, k, v, sinks, mask)
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1]
            )
        if T == 1 and single_query_pays(q, k):
            if 0 < self.window < S:  # the window: the last `window` keys
                k, v = k[:, :, -self.window :], v[:, :, -self.window :]
            return single_query_attention(q, k, v, sinks)
        mask = self._mask(T, S, q.device)
        if sinks is not None:
            return sink_sdpa(q, k, v, sinks, mask)
        gqa = q.shape[1] != k.shape[1]
        if mask is None:
            causal = T > 1 and self.causal
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
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

    def project(
        self, x: torch.Tensor, q_heads: int, kv_heads: int, offset: int | torch.Tensor = 0
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """q for the first `q_heads` query heads ([B, q_heads, T, hd]; None when 0) and k, v for
        the first `kv_heads` KV heads ([B, kv_heads, T, hd]), QK-normed and rotated for positions
        offset..offset+T-1. Every head: one GEMM over the fused weight (the plain path, bit for
        bit); fewer: F.linear on row views of it, no copies."""
        B, T, _ = x.shape
        hd = self.head_dim
        if q_heads == self.n_head and kv_heads == self.n_kv_head:
            q, k, v = self.qkv_proj(x).split([self.q_dim, self.kv_dim, self.kv_dim], dim=-1)
        else:
            w, b, kq, kv = self.qkv_proj.weight, self.qkv_proj.bias, self.q_dim, self.q_dim + self.kv_dim

            def rows(lo: int, n: int) -> torch.Tensor:  # the projection of weight rows lo..lo+n-1
                return F.linear(x, w[lo : lo + n], None if b is None else b[lo : lo + n])

            q = rows(0, q_heads * hd) if q_heads else None
            k = rows(kq, kv_heads * hd)
            v = rows(kv, kv_heads * hd)
        k = k.view(B, T, kv_heads, hd).transpose(1, 2)
        v = v.view(B, T, kv_heads, hd).transpose(1, 2)
        if self.qk_norm:
            k = rms_norm(k, self.k_norm_weight, self.eps)
        if self.rotary is not None:
            k = self.rotary(k, offset)
        if q is not None:
            q = q.view(B, T, q_heads, hd).transpose(1, 2)
            if self.qk_norm:
                q = rms_norm(q, self.q_norm_weight, self.eps)
            if self.rotary is not None:
                q = self.rotary(q, offset)
        return q, k, v

    def write_kv(self, x: torch.Tensor, cache: KVStore) -> None:
        """Compute and store only K/V of `x` (normed input) for the heads the cache keeps: a layer
        an early-exited token skips still leaves an entry for later tokens (CALM copy-forward)."""
        n = cache.heads_for(0)
        _, k, v = self.project(x, 0, n, cache.length)
        cache.append(k, v)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVStore | None = None,
        width: float = 1.0,
        row_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention at a Matryoshka width (1.0: every head), appending this call's K/V to
        `cache` when given. The cache may keep more KV heads than the width reads (it stores the
        widest width seen); they are computed and stored, and only the width's heads are read.
        row_mask: [B, heads at this width, 1, 1] of 0/1, zeroing a row's heads past its own
        (narrower) width before the output projection, so rows of several widths share one
        pass (batched auto decoding)."""
        B, T, _ = x.shape
        hq, hkv = self.heads_at(width)
        n_store = hkv if cache is None else cache.heads_for(hkv)
        offset = 0 if cache is None else getattr(cache, "positions", cache.length)  # per row, or shared
        q, k, v = self.project(x, hq, n_store, offset)
        key_mask = None
        if cache is not None:
            k, v = cache.append(k, v)
            if hasattr(cache, "key_mask"):  # rows of different lengths (model/cache.py PaddedKV)
                key_mask = cache.key_mask()
        if hkv < n_store:
            k, v = k[:, :hkv], v[:, :hkv]
        group = self.n_head // self.n_kv_head
        if hkv > 1 and hq != hkv * group:  # a partial last group: SDPA's i // (hq/hkv) map is wrong
            k = k.repeat_interleave(group, dim=1)[:, :hq]
            v = v.repeat_interleave(group, dim=1)[:, :hq]
        y = self._attend(q, k, v, key_mask)
        if row_mask is not None:  # a row of a narrower width: its heads past that width give 0
            y = y * row_mask
        y = y.transpose(1, 2).reshape(B, T, hq * self.head_dim)
        if hq == self.n_head:
            return self.o_proj(y)
        return F.linear(y, self.o_proj.weight[:, : hq * self.head_dim], self.o_proj.bias)
