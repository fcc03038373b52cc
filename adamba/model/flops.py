"""One FLOPs accounting: 2 x the multiply-adds of every matmul a token runs (forward).

Used by the elastic runner's per-token accounting (widths, exits, copy-forward K/V), by the
training MFU in benchmarks, and by the coming cost estimator, so the three never disagree.
Norms, activations, rotary and softmax are left out (a few % at these shapes); so are the
Mamba2 / KDA scans, counted as their projections only, like their decoding state, whose cost does
not grow with the context.
"""

from __future__ import annotations

from torch import nn


def mixer_matmul_flops(mixer: nn.Module) -> float:
    """Per-token FLOPs of an M/K mixer: 2 x its matrix weights (always full width)."""
    return 2 * sum(p.numel() for p in mixer.parameters() if p.ndim >= 2)


def attention_flops(attn: nn.Module, d_model: int, q_heads: int, kv_heads: int, ctx: int) -> float:
    """One token through attention with `q_heads` query heads, K/V computed for `kv_heads` heads,
    attending over `ctx` keys: the q/k/v projections, the scores and weighted values, o_proj."""
    hd = attn.head_dim
    return 2 * d_model * hd * (q_heads + 2 * kv_heads) + 4 * q_heads * hd * ctx + 2 * q_heads * hd * d_model


def mlp_flops(mlp: nn.Module, d_model: int, units: int) -> float:
    """One token through an MLP with `units` hidden units (SwiGLU has three matrices, ReLU² two)."""
    return 2 * d_model * units * (3 if mlp.act == "swiglu" else 2)


def layer_flops(block: nn.Module, d_model: int, width: float, ctx: int, kv_heads: int | None = None) -> float:
    """One token through a block at a Matryoshka width; `kv_heads`: the KV heads whose K/V are
    computed (a cache may store more than the width reads; None = what the width reads)."""
    if block.kind == "A":
        hq, hkv = block.mixer.heads_at(width)
        f = attention_flops(block.mixer, d_model, hq, hkv if kv_heads is None else kv_heads, ctx)
    else:
        f = mixer_matmul_flops(block.mixer)
    if block.mlp is not None:
        f += mlp_flops(block.mlp, d_model, block.mlp.units_at(width))
    return f


def copy_forward_flops(block: nn.Module, d_model: int, kv_heads: int) -> float:
    """A skipped layer's cost under early exit (CALM-style copy-forward): the K/V projections of
    the heads its cache stores; an M/K layer still runs its mixer to advance its state."""
    if block.kind != "A":
        return mixer_matmul_flops(block.mixer)
    return 2 * d_model * block.mixer.head_dim * 2 * kv_heads


def head_flops(model: nn.Module) -> float:
    """The LM head, which every token pays once."""
    return 2 * model.cfg.d_model * model.cfg.vocab_size


def token_flops(model: nn.Module, ctx: int) -> float:
    """One token through the full-width model at context `ctx`, LM head included: the reference
    that elastic FLOPs are reported against."""
    d = model.cfg.d_model
    return head_flops(model) + sum(layer_flops(b, d, 1.0, ctx) for b in model.blocks)


def train_flops_per_token(n_params: int, attn_layers: int, attn_dim: int, seq: int) -> float:
    """Training FLOPs per token (forward + backward) for MFU: 6N for the matmuls over the
    `n_params` non-embedding parameters, plus the attention scores and values of `attn_layers`
    layers of `attn_dim` = heads x head size at sequence length `seq` (PaLM, appendix B). Takes
    numbers, not a model, so a transformers peer is counted the same way."""
    return 6 * n_params + 6 * attn_layers * attn_dim * seq
