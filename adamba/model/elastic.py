"""Elastic compute, the model side: Matryoshka widths, the ConfidenceGate and LayerDimPredictor
heads, compute modes and the policies a decoder runs them under.

Width scheme (exact sub-networks). A width w from `elastic.widths` keeps, in every attention
layer, the first hq = round(w * n_head) query heads (at least one) and the KV heads those heads
read in GQA order (query head i reads KV head i // group, so the first ceil(hq / group) KV
heads); in every MLP the first round(w * hidden) units. The weights are sliced views (F.linear on
row/column slices), the residual stream stays full width, the output projection reads the
matching input-column slice. Mamba2/KDA mixers stay full width. Width 1.0 takes the plain code
path, bit for bit. A key of KV head h is the same at every width, so one cache serves all widths
(adamba/model/cache.py).

The heads (`ElasticHeads`, attached as `model.elastic`; their weights are in the checkpoint):
  * ConfidenceGate: one small head per layer but the last (Linear(d, 1), or a d -> gate_hidden
    -> 1 MLP): the logit of "this layer's hidden state, through the final norm + LM head, already
    gives this width's final argmax". With `gate_per_width` every narrow width has its own set.
    The gate-calibration phase fits them with the LM frozen (adamba/train/elastic.py).
  * LayerDimPredictor: a 2-layer MLP on a prompt's pooled hidden state after `predictor_layer`
    layers, the probability per later layer and width that the width is good enough for the
    continuation; trained alongside the LM on detached inputs (adamba/train/elastic.py).

Compute modes: ghost (the smallest width), whisper (1/4), normal (1/2) and think (full) run one
width in every layer and never exit; auto lets the predictor pick the width and the gate exit
tokens early or widen the last layers (`ElasticRunner`, adamba/model/elastic_runner.py; scored
by adamba/eval/efficiency.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from adamba.config import ElasticConfig, ModelConfig
from adamba.errors import AdambaError

MODES = ("ghost", "whisper", "normal", "think", "auto")
MODE_FRACTION = {"whisper": 0.25, "normal": 0.5, "think": 1.0}  # ghost = the smallest width


def check_width(width: float, ecfg: ElasticConfig) -> float:
    if not any(abs(width - w) < 1e-9 for w in ecfg.widths):
        raise AdambaError(f"width {width} is not a configured width; elastic.widths = {ecfg.widths}")
    return float(width)


def mode_width(mode: str, ecfg: ElasticConfig) -> float:
    """The fixed width of a mode: ghost = smallest, else the configured width nearest its fraction."""
    if mode not in MODES:
        raise AdambaError(f"unknown compute mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "ghost":
        return min(ecfg.widths)
    if mode == "auto":
        raise AdambaError("mode 'auto' has no fixed width (the predictor chooses per prompt)")
    frac = MODE_FRACTION[mode]
    return min(ecfg.widths, key=lambda w: (abs(math.log(w / frac)), -w))


def require_elastic(ecfg: ElasticConfig, what: str = "a compute mode") -> None:
    if not ecfg.enabled:
        raise AdambaError(
            f"{what} needs a checkpoint trained with Matryoshka widths (elastic.enabled=true); "
            "this one was trained dense: drop --mode or retrain with --set elastic.enabled=true"
        )


class ElasticHeads(nn.Module):
    """The ConfidenceGate (per layer but the last: Linear(d, 1), or a d -> gate_hidden -> 1 MLP)
    and the LayerDimPredictor."""

    PARAM_ROLES = {"*.weight": "aux", "*.bias": "bias"}

    def __init__(self, mcfg: ModelConfig, ecfg: ElasticConfig):
        super().__init__()
        d, L, W = mcfg.d_model, mcfg.n_layer, len(ecfg.widths)
        self.widths = list(ecfg.widths)
        self.ecfg = ecfg  # thresholds and widths the model was trained with (not a weight)
        g = ecfg.gate_hidden

        def gate_set() -> nn.ModuleList:
            return nn.ModuleList(
                nn.Sequential(nn.Linear(d, g), nn.ReLU(), nn.Linear(g, 1)) if g else nn.Linear(d, 1)
                for _ in range(L - 1)
            )

        self.gates = gate_set()  # full width (and every width without gate_per_width)
        # gate_per_width: a narrow width's hidden states and its own last layer differ from the
        # full model's, so a gate fitted at full width misjudges them (measured: ghost + exits
        # lost 0.022 bits/byte with the full-width gate); these are fitted by calibrate_gate
        self.narrow = [w for w in self.widths if w < 1.0] if ecfg.gate_per_width else []
        self.width_gates = nn.ModuleList(gate_set() for _ in self.narrow)
        self.gate_flops = 2 * (d * g + g) if g else 2 * d  # per token per gated layer
        self.predictor = nn.Sequential(nn.Linear(d, 64), nn.ReLU(), nn.Linear(64, L * W))
        self.n_layer, self.n_widths = L, W
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def gate_logit(self, layer: int, h: torch.Tensor, width: float = 1.0) -> torch.Tensor:
        """Logit of 'layer `layer`'s state h (computed at `width`) already gives this width's
        final argmax'."""
        gates = self.width_gates[self.narrow.index(width)] if width in self.narrow else self.gates
        return gates[layer](F.rms_norm(h, (h.shape[-1],))).squeeze(-1)

    def predictor_logits(self, pooled: torch.Tensor) -> torch.Tensor:
        """[B, d] -> [B, n_layer, n_widths] logits of 'this width is good enough here'."""
        out = self.predictor(F.rms_norm(pooled, (pooled.shape[-1],)))
        return out.view(-1, self.n_layer, self.n_widths)


def attach_elastic(model: nn.Module, ecfg: ElasticConfig) -> nn.Module:
    """Give an LM its gate + predictor heads (their weights live in the checkpoint as elastic.*)."""
    model.elastic = ElasticHeads(model.cfg, ecfg).to(next(model.parameters()).device)
    return model


def run_layers(model, idx: torch.Tensor, widths: list[float], keep: bool = False):
    """Embedding + blocks at per-layer widths; (final hidden, per-layer hiddens if keep)."""
    x = model.embed(idx)
    hs = []
    for block, w in zip(model.blocks, widths):
        x = block(x, None, w)
        if keep:
            hs.append(x)
    return x, hs


@torch.no_grad()
def layer_agreement(model, x: torch.Tensor, width: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Hidden states at `width` after every layer but the last, and a [L-1, B, T] bool: does
    that layer's state, through the final norm + LM head, already give the final argmax of
    the same width?"""
    h, hs = run_layers(model, x, [width] * len(model.blocks), keep=True)
    final = model.head(model.norm(h)).argmax(-1)
    return hs[:-1], torch.stack([model.head(model.norm(s)).argmax(-1) == final for s in hs[:-1]])


@dataclass
class Policy:
    """How a runner spends compute: fixed per-layer widths or the predictor, gate thresholds."""

    widths: list[float] | None  # None = ask the LayerDimPredictor once per prompt
    exit_threshold: float | None = None  # None = never exit early
    expand_threshold: float | None = None  # None = never expand


def mode_policy(mode: str, model, ecfg: ElasticConfig) -> Policy:
    L = len(model.blocks)
    if mode == "auto":
        return Policy(None, ecfg.exit_threshold, ecfg.expand_threshold)
    return Policy([mode_width(mode, ecfg)] * L)


def policy_from_mode(model, ecfg: ElasticConfig, mode: str) -> Policy:
    require_elastic(ecfg)
    return mode_policy(mode, model, ecfg)


def model_ecfg(model) -> ElasticConfig:
    """The ElasticConfig a loaded model was trained with; a clear error for dense checkpoints."""
    if not hasattr(model, "elastic"):
        require_elastic(ElasticConfig(enabled=False))
    return model.elastic.ecfg
