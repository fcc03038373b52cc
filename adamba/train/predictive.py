"""Predictive training (experimental): skip some backward passes by applying a learned model's
prediction of the optimizer's next update. [predictive] in the config turns it on.

Phases, one step each at a time, in cycles:
  WARMUP  real steps (forward, backward, AdamW) that only collect the applied updates;
  FULL    real steps that also train the dynamics model on (state, update) pairs;
  PREDICT forward only: apply the predicted update, compare the observed loss with the loss the
          recent real steps extrapolate to, and leave early when it is above the band;
  CORRECT real steps that measure the residual between the predicted and the real update, store
          it and fit the corrector; then PREDICT again if the last prediction was good enough
          (relative error <= max_error), else FULL. The horizon doubles after a PREDICT run that
          went the whole way and halves after one that left early.

The design, and why:
- The update is what AdamW applied (p_after - p_before, weight decay included), per parameter
  tensor. A prediction must be full-size and cheap, so it is a combination of the last `history`
  updates of the same tensor: delta = s * sum_j c_j u_{t-j}, s the learning-rate ratio (the
  schedule keeps moving during PREDICT). Only the coefficients are predicted.
- The state encoder is learned: per tensor, the cosines between its recent updates, their norm
  ratios, the step size relative to the weight and the learning-rate ratio go through a small MLP
  (the encoder); the dynamics head maps its code to the k coefficients. A GRU would need
  backpropagation through a sequence of steps we only see one at a time; the window of k updates
  is the state instead. Both train by Adam on the one-step-ahead error
  ||s sum c_j u_{t-j} - u_t||^2 / ||u_t||^2, which needs only the k x k Gram matrix of the
  history and k dot products with the new update (kept incrementally in a ring), never a copy of
  the model per coefficient.
- The corrector: on CORRECT steps the residual r = u - prediction is stored (the last two per
  tensor); a head on the (detached) code gives two coefficients over the stored residuals, fitted
  the same way to the new residual. Its error is measured before each fit, so corr_error vs
  corr_base is a held-out figure. PREDICT applies prediction + correction.
- During PREDICT the applied update joins the history (an autoregressive rollout), AdamW's moments
  and step count stay as they were (there is no gradient to feed them) and the schedule's step
  advances. A departure does not revert the last update (the history has already moved on); the
  CORRECT steps that follow repair it with real gradients.
- Each phase of a run starts the mode afresh at WARMUP (its trainable set may differ); one
  process only (PREDICT steps are not synchronised across ranks), LM and SFT objectives only.
- Accounting: forward and backward passes, and FLOPs from adamba/model/flops.py (a real
  micro-step pays forward + backward per token, a PREDICT micro-step the forward only) plus the
  mode's own elementwise work (dot products, applying updates, snapshots), so a comparison at
  equal compute charges the mode what it costs.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from adamba.config import Config
from adamba.errors import AdambaError
from adamba.model import flops

PHASES = ("warmup", "full", "predict", "correct")
LOSS_DECAY = 0.9  # smoothing of the loss level, slope and noise the PREDICT band is drawn from
SUPPORTED = ("lm", "sft")  # objectives whose step is one forward + one backward per micro-batch


def n_features(k: int) -> int:
    return k * (k - 1) // 2 + (k - 1) + 2


class Dynamics(nn.Module):
    """The learned part: state encoder, dynamics head (k coefficients), corrector head (2)."""

    def __init__(self, k: int, hidden: int, gen: torch.Generator):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_features(k), hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
        )
        self.head = nn.Linear(hidden, k)
        self.corrector = nn.Linear(hidden, 2)
        with torch.no_grad():  # its own generator: turning the mode on leaves the run's RNG alone
            for m in self.encoder:
                if isinstance(m, nn.Linear):
                    m.weight.copy_(torch.randn(m.weight.shape, generator=gen) / math.sqrt(m.in_features))
                    m.bias.zero_()
            self.head.weight.copy_(torch.randn(self.head.weight.shape, generator=gen) * 0.01)
            self.head.bias.zero_()
            self.head.bias[0] = 1.0  # starts as "repeat the last update", learns from there
            self.corrector.weight.zero_()  # starts as no correction
            self.corrector.bias.zero_()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return h, self.head(h), self.corrector(h.detach())


def _quad(c: torch.Tensor, G: torch.Tensor, b: torch.Tensor, bb: torch.Tensor) -> torch.Tensor:
    """||B^T c - y||^2 per tensor from G = B B^T, b = B y, bb = y.y (batched over tensors)."""
    return torch.einsum("ti,tij,tj->t", c, G, c) - 2 * (c * b).sum(-1) + bb


class Predictive:
    """The mode's state over a phase's trainable tensors; the trainer calls `real_step` around
    AdamW's step on a real step and `predict_step` instead of backward + AdamW on a PREDICT step."""

    def __init__(self, cfg: Config, named: list[tuple[str, torch.Tensor]], model=None, seq_len: int = 0):
        pc = self.pc = cfg.predictive
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        k, T = pc.history, len(self.params)
        self.k = k
        gen = torch.Generator().manual_seed(cfg.train.seed + 7919)
        dev = self.params[0].device if self.params else torch.device("cpu")
        self.dyn = Dynamics(k, pc.hidden, gen).to(dev)
        self.opt = torch.optim.Adam(self.dyn.parameters(), lr=pc.lr)
        self.H = [torch.zeros((k, *p.shape), device=p.device, dtype=p.dtype) for p in self.params]
        self.G = torch.zeros(T, k, k, device=dev, dtype=torch.float64)
        self.R = [torch.zeros((2, *p.shape), device=p.device, dtype=p.dtype) for p in self.params]
        self.GR = torch.zeros(T, 2, 2, device=dev, dtype=torch.float64)
        self.pos = self.rpos = -1  # ring slots of the newest update and residual
        self.filled = self.rfilled = 0
        self.phase, self.left = ("warmup", pc.warmup_steps) if pc.warmup_steps else ("full", pc.full_steps)
        self.horizon, self.run_len = pc.horizon, 0
        self.lr_last = 0.0
        self.level = self.slope = self.var = self.prev_loss = None
        self.dyn_error = self.corr_error = self.corr_base = None
        self.count = dict(forwards=0, backwards=0, real_steps=0, predict_steps=0, departures=0)
        self.count.update(flops_model=0.0, flops_overhead=0.0)
        self.n_elem = sum(p.numel() for p in self.params)
        self.per_token = (
            flops.train_flops(model, seq_len, set(self.names)) if model is not None else flops.TrainFlops()
        )

    # ---- the features and the prediction ----------------------------------------------------
    def _order(self, G: torch.Tensor, pos: int, n: int) -> torch.Tensor:
        perm = [(pos - j) % n for j in range(n)]  # newest first
        return G[:, perm][:, :, perm]

    def features(self, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(features [T, F], the ordered Gram matrix [T, k, k]) of every tensor's history."""
        k = self.k
        G = self._order(self.G, self.pos, k)
        nrm = torch.diagonal(G, dim1=1, dim2=2).clamp_min(1e-30).sqrt()
        cos = G / (nrm[:, :, None] * nrm[:, None, :])
        iu = torch.triu_indices(k, k, 1)
        ratios = torch.log(nrm[:, 1:] / nrm[:, :1]).clamp(-5, 5)
        pn = torch.stack([p.detach().double().norm() for p in self.params]).clamp_min(1e-30)
        rel = (torch.log(nrm[:, 0] / pn).clamp(-30, 5) / 10)[:, None]
        lrr = torch.full_like(rel, math.log(self.lr_scale(lr)))
        x = torch.cat([cos[:, iu[0], iu[1]], ratios, rel, lrr], dim=1)
        return x.float(), G

    def lr_scale(self, lr: float) -> float:
        return lr / self.lr_last if self.lr_last > 0 and lr > 0 else 1.0

    def _combine(self, bank: list[torch.Tensor], pos: int, n: int, coef: torch.Tensor) -> list[torch.Tensor]:
        """Per tensor: sum_j coef[t, j] * bank[t][slot of the j-th newest]."""
        perm = torch.tensor([(pos - j) % n for j in range(n)], device=coef.device)
        out = []
        for t, B in enumerate(bank):
            w = torch.zeros(n, device=B.device, dtype=B.dtype)
            w[perm] = coef[t].to(B.dtype)
            out.append(torch.tensordot(w, B, dims=1))
        return out

    def predicted_update(self, lr: float) -> list[torch.Tensor]:
        """The full-size update PREDICT would apply now: s * sum_j c_j u_{t-j} + correction."""
        with torch.no_grad():
            x, _ = self.features(lr)
            _, c, d = self.dyn(x)
            delta = self._combine(self.H, self.pos, self.k, c.double() * self.lr_scale(lr))
            if self.rfilled:
                corr = self._combine(self.R, self.rpos, 2, d.double())
                delta = [a + b for a, b in zip(delta, corr)]
        self.count["flops_overhead"] += 2.0 * (self.k + 2) * self.n_elem
        return delta

    # ---- the ring buffers -------------------------------------------------------------------
    def _push(self, bank, G, pos: int, n: int, vals: list[torch.Tensor]) -> int:
        """Write vals into the next slot of a ring and refresh its Gram rows; the new slot."""
        pos = (pos + 1) % n
        for t, (B, v) in enumerate(zip(bank, vals)):
            B[pos].copy_(v)
            dots = (B.reshape(n, -1).double() @ v.reshape(-1).double()).to(G.dtype)
            G[t, pos, :] = dots
            G[t, :, pos] = dots
        self.count["flops_overhead"] += 2.0 * (n + 1) * self.n_elem
        return pos

    def _dots(self, bank, pos: int, n: int, vals: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(bank . v ordered newest first [T, n], v . v [T]) for one new vector per tensor."""
        perm = [(pos - j) % n for j in range(n)]
        b = torch.stack(
            [(B.reshape(n, -1).double() @ v.reshape(-1).double())[perm] for B, v in zip(bank, vals)]
        )
        vv = torch.stack([v.double().pow(2).sum() for v in vals])
        self.count["flops_overhead"] += 2.0 * (n + 1) * self.n_elem
        return b, vv

    # ---- a real step ------------------------------------------------------------------------
    def real_step(self, step_fn, loss: float, lr: float, micro: int = 1, tokens: int = 0) -> dict:
        """Run `step_fn` (AdamW's step), learn from the update it applied, move the phase. The
        state is read before the step: what a PREDICT step in its place would have seen."""
        phase = self.phase
        learn = self.filled == self.k and phase != "warmup"
        state = self.features(lr) if learn else None
        before = [p.detach().clone() for p in self.params]
        step_fn()
        with torch.no_grad():
            u = [p.detach() - b for p, b in zip(self.params, before)]
        self.count["flops_overhead"] += 2.0 * self.n_elem
        self._account(micro, tokens, backward=True)
        self._watch_loss(loss)
        if learn:
            self._learn(state, u, lr, correct=phase == "correct")
        self.pos = self._push(self.H, self.G, self.pos, self.k, u)
        self.filled = min(self.k, self.filled + 1)
        self.lr_last = lr
        self._advance_real()
        return self.row(phase)

    def _learn(self, state, u: list[torch.Tensor], lr: float, correct: bool) -> None:
        """One Adam step of the dynamics model (and on CORRECT steps the corrector) on this update;
        the errors are recorded before the step, so they are held-out figures."""
        x, G = state
        b, uu = self._dots(self.H, self.pos, self.k, u)
        s = self.lr_scale(lr)
        uu = uu.clamp_min(1e-30)
        _, c, d = self.dyn(x)
        err = _quad(c.double() * s, G, b, uu) / uu
        loss = err.mean()
        self.dyn_error = loss.item()
        if correct:  # the residual of the dynamics prediction, the corrector's target
            with torch.no_grad():
                pred = self._combine(self.H, self.pos, self.k, c.detach().double() * s)
                r = [a - p for a, p in zip(u, pred)]
            if self.rfilled:
                GR = self._order(self.GR, self.rpos, 2)
                bR, rr = self._dots(self.R, self.rpos, 2, r)
                cerr = _quad(d.double(), GR, bR, rr) / uu
                self.corr_error, self.corr_base = cerr.mean().item(), (rr / uu).mean().item()
                loss = loss + cerr.mean()
            self.rpos = self._push(self.R, self.GR, self.rpos, 2, r)
            self.rfilled = min(2, self.rfilled + 1)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def _advance_real(self) -> None:
        if self.phase == "warmup" or (self.phase == "full" and self.filled == self.k):
            self.left -= 1
        elif self.phase == "correct":
            self.left -= 1
        if self.left > 0:
            return
        if self.phase == "warmup":
            self.phase, self.left = "full", self.pc.full_steps
        elif self.dyn_error is not None and self.dyn_error <= self.pc.max_error:
            self.phase, self.left, self.run_len = "predict", self.horizon, 0
        else:
            self.phase, self.left = "full", self.pc.full_steps

    def _watch_loss(self, loss: float) -> None:
        """Smoothed loss level, per-step slope and noise of the real steps (PREDICT's band)."""
        if not math.isfinite(loss):
            return
        if self.level is None:
            self.level, self.slope, self.var = loss, 0.0, 0.0
        else:
            dev = loss - (self.level + self.slope)
            self.var = LOSS_DECAY * self.var + (1 - LOSS_DECAY) * dev * dev
            self.slope = LOSS_DECAY * self.slope + (1 - LOSS_DECAY) * (loss - self.prev_loss)
            self.level = LOSS_DECAY * (self.level + self.slope) + (1 - LOSS_DECAY) * loss
        self.prev_loss = loss

    # ---- a PREDICT step ---------------------------------------------------------------------
    def predicted_loss(self) -> float:
        return self.level + self.slope * (self.run_len + 1)

    def predict(self, loss: float, lr: float, micro: int = 1, tokens: int = 0) -> dict:
        """The observed loss (a forward on the current weights) is checked against the band; in
        it, the predicted update is applied; out of it, PREDICT ends here."""
        self._account(micro, tokens, backward=False)
        expect = self.predicted_loss()
        row = self.row("predict")
        row.update(pred_loss=expect)
        self.run_len += 1
        self.count["predict_steps"] += 1
        if not (math.isfinite(loss) and loss <= expect + self.pc.band * math.sqrt(self.var)):
            self.count["departures"] += 1
            self.horizon = max(1, self.horizon // 2)
            self.phase, self.left = "correct", self.pc.correct_steps
            return row
        delta = self.predicted_update(lr)
        with torch.no_grad():
            for p, dlt in zip(self.params, delta):
                p.add_(dlt.to(p.dtype))
        self.pos = self._push(self.H, self.G, self.pos, self.k, delta)
        self.lr_last = lr
        self.left -= 1
        if self.left == 0:
            self.horizon = min(self.pc.max_horizon, self.horizon * 2)
            self.phase, self.left = "correct", self.pc.correct_steps
        return row

    def predict_step(self, trainer, lr: float) -> tuple[float, float, dict]:
        """A PREDICT step of the trainer: its micro-batches forward only (no graph), then `predict`.
        Returns (the step's loss, a gradient norm of 0: none was computed, the metrics it adds)."""
        count, loss_sum = 0.0, 0.0
        with torch.no_grad():
            for _ in range(trainer.phase.grad_accum):
                with trainer.amp:
                    _, logged, n = trainer.wrapped(
                        trainer.objective.loss, trainer.phase_step, trainer.next_batch
                    )
                count += float(n)
                loss_sum += float(logged) * float(n)
        loss = loss_sum / max(count, 1.0)
        return loss, 0.0, self.predict(loss, lr, trainer.phase.grad_accum, int(count))

    # ---- accounting and state ---------------------------------------------------------------
    def _account(self, micro: int, tokens: int, backward: bool) -> None:
        c, f = self.count, self.per_token
        c["forwards"] += micro
        c["backwards"] += micro if backward else 0
        c["real_steps"] += 1 if backward else 0
        c["flops_model"] += tokens * (f.total if backward else f.forward)

    @property
    def flops(self) -> float:
        return self.count["flops_model"] + self.count["flops_overhead"]

    def row(self, phase: str) -> dict:
        """The metrics this step adds: the phase it ran in, the errors, the pass counts."""
        c = self.count
        row = {"predictive": phase, "backward_skipped": c["forwards"] - c["backwards"], "flops": self.flops}
        row.update(forwards=c["forwards"], backwards=c["backwards"], horizon=self.horizon)
        for key in ("dyn_error", "corr_error", "corr_base"):
            if getattr(self, key) is not None:
                row[key] = getattr(self, key)
        return row

    @property
    def skips_backward(self) -> bool:
        return self.phase == "predict"

    SCALARS = ("pos", "rpos", "filled", "rfilled", "phase", "left", "horizon", "run_len", "lr_last")
    SCALARS += ("level", "slope", "var", "prev_loss", "dyn_error", "corr_error", "corr_base", "count")

    def state_dict(self) -> dict:
        return {
            "names": self.names,
            "H": self.H,
            "G": self.G,
            "R": self.R,
            "GR": self.GR,
            "dyn": self.dyn.state_dict(),
            "opt": self.opt.state_dict(),
            **{k: getattr(self, k) for k in self.SCALARS},
        }

    def load_state_dict(self, st: dict) -> None:
        if not st:  # a checkpoint of a run without the mode: it starts here, at WARMUP
            return
        if st.get("names") != self.names:
            raise AdambaError(
                "cannot resume: the checkpoint's predictive state covers other parameters than this "
                "phase trains; resume with the same model and phases (or predictive.enabled=false)"
            )
        for mine, theirs in ((self.H, st["H"]), (self.R, st["R"])):
            for a, b in zip(mine, theirs):
                a.copy_(b)
        self.G.copy_(st["G"])
        self.GR.copy_(st["GR"])
        self.dyn.load_state_dict(st["dyn"])
        self.opt.load_state_dict(st["opt"])
        for k in self.SCALARS:
            setattr(self, k, dict(st[k]) if k == "count" else st[k])


class Off:
    """The mode switched off (the trainer's default): AdamW's step, nothing kept or added."""

    skips_backward = False

    def real_step(self, step_fn, *_) -> dict:
        step_fn()
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, st: dict) -> None:
        pass  # a run that had the mode on resumes without it: plain AdamW from here


def build(cfg: Config, model: nn.Module, objective: str, seq_len: int, world: int) -> Predictive | Off:
    """The mode for a phase (Off when predictive.enabled is false); refuses what it cannot do in
    one line."""
    if not cfg.predictive.enabled:
        return Off()
    if world > 1:
        raise AdambaError(
            "predictive.enabled=true runs in one process only (its PREDICT steps are not "
            "synchronised across ranks): run without torchrun, or set predictive.enabled=false"
        )
    if objective not in SUPPORTED:
        raise AdambaError(
            f"predictive.enabled=true supports the {' and '.join(SUPPORTED)} objectives, not "
            f"{objective!r}: set predictive.enabled=false for this run"
        )
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return Predictive(cfg, named, model, seq_len)
