"""The parameter-name contract: every parameter has a role, declared once by the layer that owns it.

Each layer class carries `PARAM_ROLES`, a dict from its parameters' names (relative to the layer,
fnmatch patterns allowed) to a role below. `param_roles(model)` resolves every parameter's full
name to its role and refuses a parameter that no layer declares (or that two declare
differently), so a new layer cannot fall silently into the wrong weight-decay group or init.
Init (`LM.reset_parameters`), the optimizer's groups (`adamba/train/optim.py`), and later freeze
globs and Hugging Face name maps read roles, never substrings of names.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

from torch import nn


@dataclass(frozen=True)
class Role:
    decay: bool  # AdamW weight decay (matrices that map features; not scales, offsets, time constants)
    init: str  # "normal": N(0, init_std); "out": N(0, init_std / sqrt(2 n_layer)), zero with
    # zero_init_out; "head": N(0, init_std), zero with zero_init_out; "own": the layer's own init


ROLES = {
    "matrix": Role(True, "normal"),  # projections into a layer's features
    "out": Role(True, "out"),  # residual output projections (GPT-2 scaled init)
    "embed": Role(False, "normal"),  # token embedding (its own learning-rate group)
    "head": Role(True, "head"),  # the LM head
    "norm": Role(False, "own"),  # norm scales (ones)
    "time": Role(False, "own"),  # SSM / gate time scales: A_log, dt_bias, D (their own ranges)
    "conv": Role(True, "own"),  # depthwise causal conv kernels (PyTorch's init)
    "bias": Role(False, "own"),  # additive offsets
    "aux": Role(True, "own"),  # small heads beside the LM (elastic gates, predictor), own init
}


def param_roles(model: nn.Module) -> dict[str, str]:
    """Full parameter name -> role name, from every layer's PARAM_ROLES (shared parameters, as a
    tied head, appear once, under their first name)."""
    roles: dict[str, str] = {}
    for prefix, mod in model.named_modules():
        declared = getattr(type(mod), "PARAM_ROLES", None)
        if not declared:
            continue
        for rel, _ in mod.named_parameters():
            role = next((r for pat, r in declared.items() if fnmatchcase(rel, pat)), None)
            if role is None:
                continue
            if role not in ROLES:
                raise ValueError(f"{type(mod).__name__}.PARAM_ROLES: unknown role {role!r} for {rel}")
            name = f"{prefix}.{rel}" if prefix else rel
            if roles.setdefault(name, role) != role:
                raise ValueError(f"parameter {name} has two roles: {roles[name]} and {role}")
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n in names if n not in roles]
    if missing:
        raise ValueError(
            f"parameters without a declared role: {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (add them to their layer's PARAM_ROLES)"
        )
    return {n: roles[n] for n in names}
