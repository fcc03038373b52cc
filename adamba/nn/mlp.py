"""Feed-forward: ReLU^2 (default, cheap and strong at small scale) or SwiGLU."""

import torch
import torch.nn.functional as F
from torch import nn

from adamba.config import ModelConfig


class MLP(nn.Module):
    PARAM_ROLES = {"w_up.weight": "matrix", "w_gate.weight": "matrix", "w_down.weight": "out"}

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.act = cfg.mlp.act
        self.hidden = int(round(cfg.mlp.ratio * cfg.d_model))
        self.w_up = nn.Linear(cfg.d_model, self.hidden, bias=False)
        if self.act == "swiglu":  # separate, not fused: silu on a strided half is slower on CPU
            self.w_gate = nn.Linear(cfg.d_model, self.hidden, bias=False)
        self.w_down = nn.Linear(self.hidden, cfg.d_model, bias=False)

    def units_at(self, width: float) -> int:
        """Hidden units kept at a Matryoshka width: the first round(w * hidden), at least 1."""
        return self.hidden if width >= 1.0 else min(self.hidden, max(1, round(width * self.hidden)))

    def forward(
        self, x: torch.Tensor, width: float = 1.0, row_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """row_mask: [B, 1, units at this width] of 0/1, zeroing a row's units past its own
        (narrower) width, so rows of several widths share one pass (batched auto decoding)."""
        if width < 1.0 or row_mask is not None:  # first n hidden units through weight views
            n = self.units_at(width)
            up = F.linear(x, self.w_up.weight[:n])
            if self.act == "swiglu":
                h = F.silu(F.linear(x, self.w_gate.weight[:n])) * up
            else:
                h = F.relu(up).square()
            if row_mask is not None:
                h = h * row_mask
            return F.linear(h, self.w_down.weight[:, :n])
        if self.act == "swiglu":
            h = F.silu(self.w_gate(x)) * self.w_up(x)
        else:
            h = F.relu(self.w_up(x)).square()
        return self.w_down(h)
