"""Kimi Delta Attention layer (Kimi Linear): short convs, L2-normed q/k, a low-rank per-channel
forget gate, a sigmoid write strength beta, the gated delta rule, then a per-head RMSNorm with
a low-rank sigmoid output gate.

Parameter names and shapes mirror transformers' `KimiLinearDeltaAttention`, so a state dict
copies across one-to-one (tests/test_kda.py checks the outputs agree).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adamba.config import ModelConfig
from adamba.ops import dispatch
from adamba.ops.delta import kda_step


@dataclass
class KDAState:
    """Decoding state of one KDA layer; its size does not depend on the context length."""

    conv: torch.Tensor  # [batch, 3 * heads * head_dim, kernel - 1] last inputs of the short conv
    recurrent: torch.Tensor  # [batch, heads, head_dim, head_dim] delta-rule state S (fp32 or fp64)
    length: int = 0  # tokens seen

    def nbytes(self) -> int:
        return (
            self.conv.numel() * self.conv.element_size()
            + self.recurrent.numel() * self.recurrent.element_size()
        )


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x / sqrt(|x|^2 + eps) in fp32 (the fla/transformers convention: eps inside the root)."""
    x = x.float() if x.dtype != torch.float64 else x
    return x * torch.rsqrt(x.square().sum(-1, keepdim=True) + eps)


class ForgetGate(nn.Module):
    """Per-channel log decay g = -exp(A_log) * softplus(f_b(f_a(x)) + dt_bias), always <= 0.

    Low rank (d_model -> head_dim -> heads * head_dim) keeps it cheap; A_log (one rate per head)
    and dt_bias (one offset per channel) set the time scales, so they get their own inits and no
    weight decay (the optimizer skips them by name). A_log has shape [1, 1, heads, 1] as in
    transformers' checkpoint layout.
    """

    def __init__(self, d_model: int, n_head: int, head_dim: int):
        super().__init__()
        self.n_head, self.head_dim = n_head, head_dim
        self.f_a_proj = nn.Linear(d_model, head_dim, bias=False)
        self.f_b_proj = nn.Linear(head_dim, n_head * head_dim, bias=False)
        self.A_log = nn.Parameter(torch.empty(1, 1, n_head, 1))
        self.dt_bias = nn.Parameter(torch.empty(n_head * head_dim))
        self.reset_gate()

    @torch.no_grad()
    def reset_gate(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """A = exp(A_log) uniform in [1, 16]; softplus(dt_bias) log-uniform in [dt_min, dt_max]
        (the Mamba2 / fla recipe), so initial per-step decays span slow to fast forgetting."""
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1.0, 16.0).log())
        dt = torch.exp(torch.empty_like(self.dt_bias).uniform_(math.log(dt_min), math.log(dt_max)))
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.f_b_proj(self.f_a_proj(x)).float() + self.dt_bias.float()
        g = -self.A_log.float().exp() * F.softplus(f).unflatten(-1, (self.n_head, self.head_dim))
        return g  # [batch, seq, heads, head_dim] fp32


class GatedRMSNorm(nn.Module):
    """RMSNorm over each head's channels, then times sigmoid(gate); in fp32 because the delta
    rule's outputs can be small and bf16 would lose them."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        y = F.rms_norm(x.float(), (x.shape[-1],), self.weight.float(), self.eps)
        return y * torch.sigmoid(gate.float())


class KDA(nn.Module):
    PARAM_ROLES = {
        "[qkvb]_proj.weight": "matrix",
        "g_[ab]_proj.weight": "matrix",
        "forget_gate.f_[ab]_proj.weight": "matrix",
        "forget_gate.A_log": "time",
        "forget_gate.dt_bias": "time",
        "conv1d.weight": "conv",
        "o_norm.weight": "norm",
        "o_proj.weight": "out",
    }

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head = cfg.kda.n_head or cfg.attn.n_head
        self.head_dim = cfg.kda.head_dim or cfg.attn.head_dim
        self.kernel = cfg.kda.conv
        self.chunk_size = cfg.kda.chunk_size
        d, inner = cfg.d_model, self.n_head * self.head_dim
        self.inner = inner
        self.q_proj = nn.Linear(d, inner, bias=False)
        self.k_proj = nn.Linear(d, inner, bias=False)
        self.v_proj = nn.Linear(d, inner, bias=False)
        # one depthwise causal conv over the concatenated [q | k | v] channels
        self.conv1d = nn.Conv1d(3 * inner, 3 * inner, self.kernel, groups=3 * inner, bias=False)
        self.forget_gate = ForgetGate(d, self.n_head, self.head_dim)
        self.b_proj = nn.Linear(d, self.n_head, bias=False)
        self.g_a_proj = nn.Linear(d, self.head_dim, bias=False)  # low-rank output gate
        self.g_b_proj = nn.Linear(self.head_dim, inner, bias=False)
        self.o_norm = GatedRMSNorm(self.head_dim, cfg.norm_eps)
        self.o_proj = nn.Linear(inner, d, bias=False)

    def init_state(self, batch: int, device, dtype) -> KDAState:
        sdtype = torch.float64 if dtype == torch.float64 else torch.float32
        return KDAState(
            conv=torch.zeros(batch, 3 * self.inner, self.kernel - 1, device=device, dtype=dtype),
            recurrent=torch.zeros(
                batch, self.n_head, self.head_dim, self.head_dim, device=device, dtype=sdtype
            ),
        )

    def _short_conv(self, x: torch.Tensor, state: KDAState | None) -> torch.Tensor:
        """Causal depthwise conv + SiLU over [batch, seq, channels]. The window of the last
        kernel-1 inputs comes from (and goes back to) the state, so decoding sees the same
        inputs the full pass would."""
        x = x.transpose(1, 2)  # [B, C, T]
        if state is None:
            x = F.pad(x, (self.kernel - 1, 0))
        else:
            x = torch.cat([state.conv.to(x.dtype), x], dim=-1)
            state.conv = x[..., x.shape[-1] - (self.kernel - 1) :].clone()
        y = F.conv1d(x, self.conv1d.weight.to(x.dtype), groups=3 * self.inner)
        return F.silu(y).transpose(1, 2)

    def forward(self, x: torch.Tensor, state: KDAState | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        H, D = self.n_head, self.head_dim
        qkv = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)
        q, k, v = self._short_conv(qkv, state).split(self.inner, dim=-1)
        q, k = l2norm(q.unflatten(-1, (H, D))), l2norm(k.unflatten(-1, (H, D)))
        v = v.unflatten(-1, (H, D))
        g = self.forget_gate(x)
        beta = torch.sigmoid(self.b_proj(x).float())
        if state is not None and T == 1:
            o, state.recurrent = kda_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0], state.recurrent)
            o = o.unsqueeze(1)
        else:
            init = state.recurrent if state is not None else None
            o, final = dispatch.kda_chunked(q, k, v, g, beta, initial_state=init, chunk_size=self.chunk_size)
            if state is not None:
                state.recurrent = final
        if state is not None:
            state.length += T
        gate = self.g_b_proj(self.g_a_proj(x)).unflatten(-1, (H, D))
        o = self.o_norm(o, gate)
        return self.o_proj(o.to(x.dtype).flatten(-2))
