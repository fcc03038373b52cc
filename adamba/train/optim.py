"""AdamW with parameter groups by role (adamba/nn/roles.py): weight decay on the roles that
decay (matrices), none on norm scales, biases, embeddings, and the SSM/gate time constants
(A_log, dt_bias, D), whose values set time scales rather than feature directions.
"""

from __future__ import annotations

import torch
from torch import nn

from adamba.config import TrainConfig
from adamba.nn.roles import ROLES, param_roles


def param_groups(model: nn.Module, weight_decay: float, embed_lr_mult: float = 1.0) -> list[dict]:
    """[decay, no_decay(, embed)] groups; each carries `lr_mult`, the factor the trainer applies to
    the scheduled learning rate (embeddings get their own when embed_lr_mult != 1: their rows see
    sparse, rare updates, so a higher rate speeds up early learning)."""
    decay, no_decay, embed = [], [], []
    roles = param_roles(model)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if embed_lr_mult != 1.0 and roles[name] == "embed":
            embed.append(p)
        elif ROLES[roles[name]].decay:
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0},
        {"params": embed, "weight_decay": 0.0, "lr_mult": embed_lr_mult},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module, cfg: TrainConfig, weight_decay: float | None = None, beta2: float | None = None
) -> torch.optim.Optimizer:
    """AdamW over the parameters that require gradients (a phase's trainable set); frozen ones
    get no optimizer state. `weight_decay` and `beta2` override [train]'s (a phase's own)."""
    wd = cfg.weight_decay if weight_decay is None else weight_decay
    b2 = cfg.beta2 if beta2 is None else beta2
    groups = param_groups(model, wd, cfg.embed_lr_mult)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, b2), eps=cfg.eps, foreach=True)
