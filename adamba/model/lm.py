"""The language model: token embedding, a stack of pre-norm blocks built from the layer
pattern (attention / Mamba2 / KDA mixer, then an optional MLP), final norm, LM head, loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from adamba.config import ModelConfig
from adamba.model.cache import KVCache
from adamba.nn.mlp import MLP
from adamba.nn.moe import MoE, RouterStats, balance_loss
from adamba.nn.norm import RMSNorm
from adamba.nn.roles import ROLES, param_roles
from adamba.ops.linear_ce import linear_cross_entropy


def build_mixer(kind: str, cfg: ModelConfig, layer_idx: int) -> nn.Module:
    """Layer-pattern letter -> sequence mixer. Imports lazily so a pattern only pulls what it uses."""
    if kind == "A":
        from adamba.nn.attention import Attention

        return Attention(cfg, layer_idx)
    if kind == "M":
        from adamba.nn.mamba2 import Mamba2

        return Mamba2(cfg, layer_idx)
    if kind == "K":
        from adamba.nn.kda import KDA

        return KDA(cfg, layer_idx)
    raise ValueError(f"unknown mixer kind {kind!r}")


class Block(nn.Module):
    PARAM_ROLES = {"norm1.weight": "norm", "norm2.weight": "norm"}  # the mixer and MLP declare theirs

    def __init__(self, cfg: ModelConfig, layer_idx: int, kind: str, ffn: str):
        super().__init__()
        self.kind = kind
        self.norm1 = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = build_mixer(kind, cfg, layer_idx)
        self.norm2 = RMSNorm(cfg.d_model, cfg.norm_eps) if ffn in ("mlp", "moe") else None
        self.mlp = MLP(cfg) if ffn == "mlp" else moe_layer(cfg) if ffn == "moe" else None
        # activation checkpointing (train.activation_checkpointing): keep only the block's input
        # for backward and recompute the rest, trading ~one more forward for activation memory
        self.checkpointing = False

    def forward(self, x: torch.Tensor, state=None, width: float = 1.0) -> torch.Tensor:
        if self.checkpointing and state is None and torch.is_grad_enabled():
            return checkpoint(self._forward, x, None, width, use_reentrant=False)
        return self._forward(x, state, width)

    def _forward(self, x: torch.Tensor, state=None, width: float = 1.0) -> torch.Tensor:
        """width < 1: Matryoshka sub-layer (attention heads + MLP or expert units); M/K mixers stay full."""
        if width < 1.0 and self.kind == "A":
            x = x + self.mixer(self.norm1(x), state, width)
        else:
            x = x + self.mixer(self.norm1(x), state)
        if self.mlp is not None:
            x = x + (self.mlp(self.norm2(x), width) if width < 1.0 else self.mlp(self.norm2(x)))
        return x


def global_stats(s: RouterStats) -> RouterStats:
    """Routing statistics summed over every process (training under DDP / FSDP2), so the
    balance loss is the one a single process would compute on the whole batch. The gradient
    runs through this process's probabilities only, scaled by all tokens / its tokens: the
    trainer's token-weighted mean over processes then gives the single process's gradient."""
    import torch.distributed as tdist

    if not (torch.is_grad_enabled() and tdist.is_available() and tdist.is_initialized()):
        return s
    if tdist.get_world_size() == 1:
        return s
    counts, probs = s.counts.detach().clone(), s.prob_sum.detach().clone()
    tokens = torch.tensor(float(s.tokens), device=counts.device)
    for t in (counts, probs, tokens):
        tdist.all_reduce(t)
    local = (s.prob_sum - s.prob_sum.detach()) * (tokens / s.tokens)
    return RouterStats(counts, probs + local, tokens)


def moe_layer(cfg: ModelConfig) -> MoE:
    m = cfg.moe
    hidden = round(m.ratio * cfg.d_model) if m.ratio > 0 else round(cfg.mlp.ratio * cfg.d_model)
    return MoE(cfg.d_model, m.n_experts, m.top_k, hidden, m.swiglu_alpha, m.swiglu_limit)


class LM(nn.Module):
    PARAM_ROLES = {"embed.weight": "embed", "norm.weight": "norm", "head.weight": "head"}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        kinds, ffns = cfg.layer_types(), cfg.layer_ffns()
        self.blocks = nn.ModuleList(Block(cfg, i, k, f) for i, (k, f) in enumerate(zip(kinds, ffns)))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Init by parameter role (adamba/nn/roles.py): "matrix" and the embedding and head
        N(0, init_std); "out", the residual output projections, N(0, init_std / sqrt(2 n_layer))
        (GPT-2) so the residual stream does not grow with depth; with zero_init_out those and the
        head then start at zero (every block the identity). "own" parameters (norm scales, SSM
        time constants, convs) keep their layer's init."""
        std, out_std = self.cfg.init_std, self.cfg.init_std / math.sqrt(2 * self.cfg.n_layer)
        params, roles = dict(self.named_parameters()), param_roles(self)
        # layers, then the embedding, then the head: the order of the random draws, so a seed
        # gives the same weights as before roles existed
        order = sorted(roles, key=lambda n: {"embed": 1, "head": 2}.get(roles[n], 0))
        for name in order:
            init = ROLES[roles[name]].init
            if init != "own":
                nn.init.normal_(params[name], 0.0, out_std if init == "out" else std)
        if self.cfg.zero_init_out:
            for name in order:
                if ROLES[roles[name]].init in ("out", "head"):
                    nn.init.zeros_(params[name])

    def num_params(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.weight.numel()
        return n

    def init_state(self, batch: int, device=None, dtype=None) -> list:
        """Per-layer decoding state: a KV cache of every KV head for attention, conv + recurrent
        state for M/K."""
        p = next(self.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        out = []
        for b in self.blocks:
            if b.kind == "A":
                a = b.mixer
                out.append(KVCache(batch, a.n_kv_head, a.head_dim, device, dtype, heads=a.n_kv_head))
            else:
                out.append(b.mixer.init_state(batch, device, dtype))
        return out

    def hidden(
        self, idx: torch.Tensor, state: list | None = None, widths: list[float] | None = None
    ) -> torch.Tensor:
        x = self.embed(idx)
        for i, block in enumerate(self.blocks):
            st = None if state is None else state[i]
            x = block(x, st) if widths is None else block(x, st, widths[i])
        return self.norm(x)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        state: list | None = None,
        widths: list[float] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Returns (logits [B,T,V], mean cross-entropy over targets != -100, or None).
        `widths`: one Matryoshka width per layer (None = full width, the plain path).
        Training (targets given, gradients on) takes the fused head + loss and returns logits
        None: the [B,T,V] logits are never materialised whole (adamba/ops/linear_ce.py)."""
        h = self.hidden(idx, state, widths)
        self.aux_loss = self._moe_aux() if targets is not None else None
        if targets is not None and torch.is_grad_enabled():
            loss = linear_cross_entropy(h, self.head.weight, targets)
            return None, loss if self.aux_loss is None else loss + self.aux_loss
        logits = self.head(h)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
            )
            if self.aux_loss is not None:
                loss = loss + self.aux_loss
        return logits, loss

    @torch.no_grad()
    def moe_report(self) -> dict:
        """What the trainer logs of the last routing ({} without MoE layers): the mean
        load-balancing loss (1 x top_k when balanced, before aux_weight) and the most loaded
        expert's share relative to an even split (1.0 = perfectly even), over the MoE layers."""
        moes = [b.mlp for b in self.blocks if isinstance(b.mlp, MoE) and b.mlp.stats is not None]
        if not moes:
            return {}
        bal = sum(float(balance_loss(m.stats, m.n_experts)) for m in moes) / len(moes)
        load = max(float(m.stats.counts.max() / m.stats.counts.mean().clamp(min=1e-9)) for m in moes)
        return {"moe_balance": bal, "moe_max_load": load}

    def _moe_aux(self) -> torch.Tensor | None:
        """model.moe.aux_weight x the mean load-balancing loss of the MoE layers' last routing
        (None without MoE layers). The lm objective logs the loss without it."""
        moes = [b.mlp for b in self.blocks if isinstance(b.mlp, MoE)]
        if not moes or self.cfg.moe.aux_weight == 0:
            return None
        aux = sum(balance_loss(global_stats(m.stats), m.n_experts) for m in moes) / len(moes)
        return self.cfg.moe.aux_weight * aux
