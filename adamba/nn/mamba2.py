"""Mamba2 block: in_proj -> [z, xBC, dt]; causal depthwise conv + SiLU on xBC; SSD scan with
A = -exp(A_log), dt = softplus(dt + dt_bias) and a D skip; gated RMSNorm; out_proj.

Parameter names and layouts follow mamba-ssm and transformers' Mamba2Mixer (in_proj rows
[z | x | B | C | dt], conv1d, dt_bias, A_log, D, norm.weight, out_proj), so weights move between
them by name. A decoding state holds the last d_conv-1 conv inputs and the [heads, head_dim,
d_state] SSM state: both have a fixed size, so a token costs the same at any context length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adamba.config import ModelConfig
from adamba.errors import AdambaError
from adamba.ops import dispatch


@dataclass
class Mamba2State:
    """conv: last d_conv-1 inputs of the conv, [batch, conv_dim, d_conv-1];
    ssm: recurrent state, [batch, heads, head_dim, d_state] (fp32 or wider)."""

    conv: torch.Tensor
    ssm: torch.Tensor
    length: int = 0  # tokens seen

    def nbytes(self) -> int:
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * self.ssm.element_size()


class GatedRMSNorm(nn.Module):
    """RMSNorm(y * silu(z)) over groups of `group_size` channels (Mamba2's norm_before_gate=False):
    with ngroups > 1 each group is normalised on its own, as in mamba-ssm."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5):
        super().__init__()
        self.group_size, self.eps = group_size, eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = y.float() * F.silu(z.float())
        h = F.rms_norm(h.unflatten(-1, (-1, self.group_size)), (self.group_size,), eps=self.eps).flatten(-2)
        return (h * self.weight).to(y.dtype)


class Mamba2(nn.Module):
    PARAM_ROLES = {
        "in_proj.weight": "matrix",
        "conv1d.weight": "conv",
        "conv1d.bias": "bias",
        "dt_bias": "time",
        "A_log": "time",
        "D": "time",
        "norm.weight": "norm",
        "out_proj.weight": "out",
    }

    def __init__(self, cfg: ModelConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        d, mc = cfg.d_model, cfg.mamba
        self.d_inner = mc.expand * d
        self.head_dim, self.d_state, self.ngroups = mc.head_dim, mc.d_state, mc.n_groups
        self.d_conv, self.chunk_size = mc.d_conv, mc.chunk_size
        if self.d_inner % self.head_dim:
            raise AdambaError(
                f"model.mamba.head_dim={self.head_dim} must divide mamba.expand*d_model={self.d_inner}"
            )
        self.n_heads = self.d_inner // self.head_dim
        if self.n_heads % self.ngroups:
            raise AdambaError(
                f"model.mamba.n_groups={self.ngroups} must divide the number of Mamba heads "
                f"{self.n_heads} (= mamba.expand*d_model / mamba.head_dim)"
            )
        if self.d_conv < 1 or self.chunk_size < 1:
            raise AdambaError(
                f"model.mamba.d_conv={self.d_conv} and model.mamba.chunk_size={self.chunk_size} must be >= 1"
            )
        self.conv_dim = self.d_inner + 2 * self.ngroups * self.d_state
        self.in_proj = nn.Linear(d, self.d_inner + self.conv_dim + self.n_heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.d_conv, groups=self.conv_dim, bias=True)
        self.dt_bias = nn.Parameter(torch.empty(self.n_heads))
        self.A_log = nn.Parameter(torch.empty(self.n_heads))
        self.D = nn.Parameter(torch.empty(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // self.ngroups, cfg.norm_eps)
        self.out_proj = nn.Linear(self.d_inner, d, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(
        self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4
    ) -> None:
        """mamba-ssm's inits: dt log-uniform in [dt_min, dt_max] stored through the inverse of
        softplus, A uniform in [1, 16] stored as log, D = 1. (Linear layers are left to LM.)"""
        dt = torch.exp(torch.rand(self.n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.log(torch.empty(self.n_heads).uniform_(1, 16)))
        self.D.fill_(1.0)

    def init_state(self, batch: int, device=None, dtype=None) -> Mamba2State:
        dtype = dtype or self.in_proj.weight.dtype
        device = device or self.in_proj.weight.device
        conv = torch.zeros(batch, self.conv_dim, self.d_conv - 1, device=device, dtype=dtype)
        ssm_dtype = torch.promote_types(dtype, torch.float32)
        ssm = torch.zeros(batch, self.n_heads, self.head_dim, self.d_state, device=device, dtype=ssm_dtype)
        return Mamba2State(conv, ssm)

    def _conv(self, xBC: torch.Tensor, state: Mamba2State | None) -> torch.Tensor:
        """Causal depthwise conv + SiLU over time, [B, T, conv_dim] -> same. With a state, the
        window starts with the previous d_conv-1 inputs (zeros at the start), which it keeps.
        Written as d_conv shifted multiply-adds in [B, T, C] layout: on CPU this beats F.conv1d,
        whose [B, C, T] layout makes the transposes and the SiLU backward slow."""
        T, k = xBC.shape[1], self.d_conv
        if state is None:
            xp = F.pad(xBC, (0, 0, k - 1, 0))
        else:
            xp = torch.cat([state.conv.transpose(1, 2).to(xBC.dtype), xBC], dim=1)
            state.conv = xp[:, T:].transpose(1, 2).clone()  # the last k-1 inputs
        w = self.conv1d.weight[:, 0].t().to(xBC.dtype)  # [k, C]
        y = torch.addcmul(self.conv1d.bias.to(xBC.dtype), xp[:, :T], w[0])
        for i in range(1, k):
            y = torch.addcmul(y, xp[:, i : i + T], w[i])
        return F.silu(y)

    def forward(self, x: torch.Tensor, state: Mamba2State | None = None) -> torch.Tensor:
        T = x.shape[1]
        h, p, g, n = self.n_heads, self.head_dim, self.ngroups, self.d_state
        z, xBC, dt = self.in_proj(x).split([self.d_inner, self.conv_dim, self.n_heads], dim=-1)
        xBC = self._conv(xBC, state)
        xs, B, C = xBC.split([self.d_inner, g * n, g * n], dim=-1)
        xs, B, C = xs.unflatten(-1, (h, p)), B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n))
        dt = F.softplus(dt.float() + self.dt_bias.float())  # [B, T, h]
        A = -torch.exp(self.A_log.float())
        if state is not None and T == 1:  # decoding: one recurrent step, O(1) in the context
            y, state.ssm = dispatch.ssd_step(xs[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], state.ssm)
            y = y[:, None]
        else:
            init = None if state is None else state.ssm
            y, final = dispatch.ssd_chunked(xs, dt, A, B, C, self.chunk_size, initial_state=init)
            if state is not None:
                state.ssm = final
        if state is not None:
            state.length += T
        y = y + xs * self.D.to(y.dtype)[:, None]
        y = self.norm(y.flatten(-2), z)
        return self.out_proj(y)
