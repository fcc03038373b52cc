"""Kimi Delta Attention (KDA): the gated delta rule with a per-key-channel forget gate.

Per head, with a state S [d_k, d_v], each token does

    S <- diag(exp g_t) S                        (forget, one rate per key channel)
    S <- S + beta_t k_t (v_t - S^T k_t)^T        (delta rule: overwrite what S says about k_t)
    o_t = S^T (scale q_t)

`kda_step` is that, once; `kda_recurrent` loops it (the reference); `kda_chunked` is the
same map computed a chunk at a time (WY/UT form), which turns the token loop into matmuls.

Chunked form. Inside a chunk of C tokens, let G_r be the cumulative log decay up to and
including token r and u_s = beta_s (v_s - S_{s-}^T k_s) the value actually written at s. With
S0 the state entering the chunk:

    (I + A) U = diag(beta) (V - (K * exp G) S0),   A_rs = beta_r sum_c k_rc k_sc exp(G_rc - G_sc), s < r
    O         = scale [(Q * exp G) S0 + P U],       P_rs = sum_c q_rc k_sc exp(G_rc - G_sc),  s <= r
    S_next    = exp(G_C) * S0 + (K * exp(G_C - G))^T U

so U = U0 - W S0 with [W | U0] = (I + A)^{-1} [beta K exp G | beta V], one triangular solve per
chunk. Every chunk's A, P, W, U0 are computed at once; only S0 -> S_next runs chunk by chunk,
as one [d_k, d_k] x [d_k, d_v] matmul: S_next = (diag(exp G_C) - Kd^T W) S0 + Kd^T U0.

Stability. exp(G_r - G_s) for s <= r is at most 1, but splitting it as exp(G_r) exp(-G_s)
overflows once the decay inside a chunk passes about -88 (fp32). `_intra_chunk` never forms a
positive exponent: inside blocks of 4 tokens it takes differences G_r - G_s, masked to -inf
*before* exp; larger blocks are built by merging halves, where every new pair straddles the
midpoint m and factors as exp(G_r - G_m) exp(G_m - G_s), both <= 1. Values and gradients stay
finite at any decay (tests push a chunk to -500), and the cost per token is O(dk log C)
elementwise work plus matmuls instead of the O(dk C) of a full pairwise [C, C, dk] tensor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SUB_BLOCK = 4  # tokens per block whose decays are taken pairwise (see _intra_chunk)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp64 stays fp64; everything else (fp32, bf16, fp16) runs in fp32, as the state needs."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def kda_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token. q, k, g [b, h, dk]; v [b, h, dv]; beta [b, h]; state [b, h, dk, dv].
    Returns (o [b, h, dv] in q's dtype, new state in the compute dtype)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    cd, out_dtype = _compute_dtype(q), q.dtype
    q, k, v, g, beta = (t.to(cd) for t in (q, k, v, g, beta))
    S = state.to(cd) * g.exp().unsqueeze(-1)
    u = beta.unsqueeze(-1) * (v - torch.einsum("bhk,bhkv->bhv", k, S))
    S = S + k.unsqueeze(-1) * u.unsqueeze(-2)
    o = torch.einsum("bhk,bhkv->bhv", q * scale, S)
    return o.to(out_dtype), S


def kda_recurrent(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference: kda_step token by token. Shapes as kda_chunked."""
    b, t, h, dk = k.shape
    dv = v.shape[-1]
    cd = _compute_dtype(q)
    S = q.new_zeros(b, h, dk, dv, dtype=cd) if initial_state is None else initial_state.to(cd)
    outs = []
    for i in range(t):
        o, S = kda_step(q[:, i], k[:, i], v[:, i], g[:, i], beta[:, i], S, scale)
        outs.append(o)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(b, 0, h, dv, dtype=cd)
    return o.to(q.dtype), S


def _chunks(x: torch.Tensor, n: int, c: int, dtype: torch.dtype) -> torch.Tensor:
    """[b, t, h, ...] -> [b, h, n, c, ...] in `dtype`, zero-padded at the end to n * c tokens."""
    x = x.to(dtype).transpose(1, 2)
    pad = n * c - x.shape[2]
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.reshape(*x.shape[:2], n, c, *x.shape[3:])


def _intra_chunk(
    q: torch.Tensor, k: torch.Tensor, G: torch.Tensor, sub: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decay-weighted dot products inside each chunk.

    q, k, G [..., C, dk] (G the in-chunk cumulative log decay). Returns
    Akk[r, s] = sum_c k_rc k_sc exp(G_rc - G_sc) for s < r (0 elsewhere) and
    Aqk[r, s] = sum_c q_rc k_sc exp(G_rc - G_sc) for s <= r (0 elsewhere), both [..., C, C].
    C / sub must be a power of two.

    Blocks of `sub` tokens: pairwise differences, masked before exp. Then blocks double: the
    pairs that a merge adds all have s in the first half and r in the second, so with the
    reference m = last token of the first half, exp(G_r - G_m) <= 1 and exp(G_m - G_s) <= 1
    and the new corner is one matmul. Cost per token ~ dk * (sub + 3 log2(C / sub)), not dk * C.
    """
    C = G.shape[-2]
    dev = G.device
    Gb, qb, kb = (t.unflatten(-2, (C // sub, sub)) for t in (G, q, k))  # [..., C/sub, sub, dk]
    incl = torch.ones(sub, sub, dtype=torch.bool, device=dev).tril()
    diff = Gb.unsqueeze(-2) - Gb.unsqueeze(-3)  # [..., C/sub, r, s, dk]
    decay = diff.masked_fill_(~incl[..., None], float("-inf")).exp_()  # in place: largest tensor
    kd = kb.unsqueeze(-3) * decay  # k_s exp(G_r - G_s)
    Aqk = (qb.unsqueeze(-2) * kd).sum(-1)  # [..., C/sub, sub, sub]; tiny blocks: no bmm
    Akk = (kb.unsqueeze(-2) * kd).sum(-1) * incl.tril(-1)
    s = sub
    while s < C:
        m = C // (2 * s)  # blocks of 2s after this merge
        # halves [..., m, s, dk]; unbind (not indexing) keeps the backward to one copy
        (G0, G1), (_, q1), (k0, k1) = (t.unflatten(-2, (m, 2, s)).unbind(-3) for t in (G, q, k))
        ref = G0[..., -1:, :]  # last token of each first half [..., m, 1, dk]
        right = (k0 * (ref - G0).exp()).transpose(-1, -2)
        left = (G1 - ref).exp()
        corner_qk = (q1 * left) @ right  # [..., m, s, s]
        corner_kk = (k1 * left) @ right
        Aqk, Akk = _merge(Aqk, corner_qk), _merge(Akk, corner_kk)
        s *= 2
    return Akk.flatten(-3, -2), Aqk.flatten(-3, -2)


def _merge(blocks: torch.Tensor, corner: torch.Tensor) -> torch.Tensor:
    """[..., 2m, s, s] diagonal blocks + [..., m, s, s] lower corners -> [..., m, 2s, 2s]."""
    first, second = blocks.unflatten(-3, (-1, 2)).unbind(-3)
    top = torch.cat([first, torch.zeros_like(corner)], dim=-1)
    bottom = torch.cat([corner, second], dim=-1)
    return torch.cat([top, bottom], dim=-2)


def kda_chunked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """KDA over a whole sequence, a chunk at a time.

    q, k [b, t, h, dk] (L2-normalised); v [b, t, h, dv]; g [b, t, h, dk] per-step log decay
    (<= 0); beta [b, t, h] in (0, 1); initial_state [b, h, dk, dv] or None (zeros).
    Returns (o [b, t, h, dv] in q's dtype, final_state [b, h, dk, dv] in fp32, or fp64 for
    fp64 inputs). Any t: the tail is padded with k = v = beta = 0 and g = 0, which leaves the
    state untouched.
    """
    b, t, h, dk = k.shape
    dv = v.shape[-1]
    scale = dk**-0.5 if scale is None else scale
    cd = _compute_dtype(q)
    C = chunk_size
    n = max(1, math.ceil(t / C))
    sub = SUB_BLOCK if C % SUB_BLOCK == 0 and (C // SUB_BLOCK) & (C // SUB_BLOCK - 1) == 0 else C
    qc, kc, vc, gc = (_chunks(x, n, C, cd) for x in (q, k, v, g))  # [b, h, n, C, d]
    bc = _chunks(beta, n, C, cd).unsqueeze(-1)  # [b, h, n, C, 1]

    G = gc.cumsum(-2)  # in-chunk cumulative log decay, <= 0
    Akk, Aqk = _intra_chunk(qc, kc, G, sub)
    eye = torch.eye(C, dtype=cd, device=q.device)
    rhs = torch.cat([kc * bc * G.exp(), vc * bc], dim=-1)
    WU = torch.linalg.solve_triangular(eye + bc * Akk, rhs, upper=False, unitriangular=True)
    W, U0 = WU.split([dk, dv], dim=-1)  # U = U0 - W S0

    # chunk-to-chunk recurrence S_next = M S0 + Bn, one matmul per chunk
    G_last = G[..., -1:, :]  # [b, h, n, 1, dk]
    Kd = (kc * (G_last - G).exp()).transpose(-1, -2)  # [b, h, n, dk, C]
    M = torch.diag_embed(G_last.squeeze(-2).exp()) - Kd @ W  # [b, h, n, dk, dk]
    Bn = Kd @ U0  # [b, h, n, dk, dv]
    # unbind, not indexing: one backward for all chunks instead of a zero-filled copy per chunk
    Ms = M.reshape(b * h, n, dk, dk).unbind(1)
    Bs = Bn.reshape(b * h, n, dk, dv).unbind(1)
    S = q.new_zeros(b * h, dk, dv, dtype=cd) if initial_state is None else initial_state.to(cd)
    S = S.reshape(b * h, dk, dv)
    starts = []
    for Mi, Bi in zip(Ms, Bs):
        starts.append(S)
        S = torch.baddbmm(Bi, Mi, S)
    S0 = torch.stack(starts, dim=1).view(b, h, n, dk, dv)  # state entering each chunk

    U = U0 - W @ S0
    o = scale * ((qc * G.exp()) @ S0 + Aqk @ U)  # [b, h, n, C, dv]
    o = o.reshape(b, h, n * C, dv)[:, :, :t].transpose(1, 2)
    return o.to(q.dtype), S.view(b, h, dk, dv)
