"""Elastic compute, the training side: the sandwich loss of a training step and the
gate-calibration phase (they become phase objectives with the phase engine).

`elastic_loss` (the trainer's loss when `elastic.enabled`): per step the full width, the smallest
and one random middle width (the "sandwich" rule), each with its own mean LM loss; the LM loss is
their average. On `expand_train` of the steps the middle member is instead an expansion schedule
(a narrow width, full width in the last `expand_layers` layers), the one auto's expansion runs.
  * Early-exit loss (`exit_loss_weight` > 0, LayerSkip / CALM style): on a random
    `exit_token_frac` of the full-width pass's positions, the cross-entropy of every
    intermediate layer's hidden state through the shared final norm + LM head, averaged over
    layers. It makes early layers predictive, which is what gives the gate tokens it can safely
    exit (without it a small model's early layers rarely agree with its last one).
    `exit_distill_weight` adds KL(final layer || layer l) with the final distribution detached,
    which teaches agreement with the final layer rather than the label.
  * LayerDimPredictor, on detached inputs (its loss cannot move the LM weights): the mean (over
    non-padding positions) of the full-width hidden state after `predictor_layer` layers over a
    prompt (the first P positions, P random per step in [4, T/2], as auto reads only the prompt),
    emitting for every later layer and every width the probability that the width is good
    enough. Target, per example and sampled width w: 1 if the example's mean loss over the
    continuation (positions >= P) at uniform width w is <= its full-width loss there +
    predictor_tol nats (default 0.04, about 1% of real-text losses). The target is a
    uniform-width schedule and auto applies one: the smallest width whose probability, averaged
    over the predicted layers, is above 1/2.

The ConfidenceGate is not trained in the loop. `calibrate_gate` (the trainer's
`elastic.calibrate_steps` phase after the LM steps) fits it with the LM frozen, on the final
model's own full-width agreement at every position, and each narrow width's gates on that width's
agreement with its own last layer. Measured (docs/experiments/elastic.md), the calibration is what makes
the gate usable: a gate trained in the loop chases a moving LM and exits almost nothing at 0.95,
and a fresh gate calibrated after training matches a warm-started one, so in-loop gate training
(`elastic.gate_weight`, `gate_full_only`) was removed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from adamba.config import ElasticConfig
from adamba.errors import AdambaError
from adamba.model.elastic import ElasticHeads, layer_agreement, run_layers


def predictor_target(loss_w: torch.Tensor, loss_full: torch.Tensor, ecfg: ElasticConfig) -> torch.Tensor:
    """1.0 where a width is good enough: its mean loss (nats/token, per example) within
    `predictor_tol` nats of the full width's. (A relative tolerance was tried and dropped: strict
    on low-loss text, loose on high-loss text, it sent the easy documents to full width;
    docs/experiments/elastic.md.)"""
    return (loss_w <= loss_full + ecfg.predictor_tol).float()


def exit_loss(model, hs: list[torch.Tensor], logits: torch.Tensor, y: torch.Tensor, ecfg: ElasticConfig):
    """The early-exit term of a full-width pass (layer hidden states `hs`, final `logits`), or
    None: on a random `exit_token_frac` of the real positions, every intermediate layer's
    cross-entropy through the final norm + LM head (+ KL to the final layer, detached, with
    `exit_distill_weight`), averaged over layers."""
    sel = (y != -100) & (torch.rand(y.shape, device=y.device) < ecfg.exit_token_frac)
    if not sel.any():
        return None
    if ecfg.exit_distill_weight > 0:
        teacher = logits.detach()[sel].float().log_softmax(-1)
    terms = []
    for h in hs[:-1]:
        lg = model.head(model.norm(h[sel])).float()
        term = ecfg.exit_loss_weight * F.cross_entropy(lg, y[sel])
        if ecfg.exit_distill_weight > 0:
            kl = F.kl_div(lg.log_softmax(-1), teacher, log_target=True, reduction="batchmean")
            term = term + ecfg.exit_distill_weight * kl
        terms.append(term)
    return torch.stack(terms).mean() if terms else None


def elastic_loss(model, x: torch.Tensor, y: torch.Tensor, ecfg: ElasticConfig):
    """The training loss of one step: (total loss to backprop, full-width LM loss for logging).

    Random choices (middle width, prompt length, scored exit positions) use the global torch RNG,
    which the trainer checkpoints, so resumed runs stay exact."""
    ws = ecfg.widths
    L = len(model.blocks)
    sample: list = [1.0]
    if ecfg.sandwich and len(ws) > 1:
        sample.append(ws[0])
        mid = ws[1:-1]
        if mid:
            sample.append(mid[int(torch.randint(len(mid), (1,)))])
        k = min(ecfg.expand_layers, L - 1)
        if k > 0 and float(torch.rand(())) < ecfg.expand_train:
            # an expansion schedule (a narrow width, then full width in the last k layers), the
            # schedule auto's expansion runs; untrained it scores far worse than the narrow
            # width alone (Tiny Shakespeare: 2.448 vs 2.373 bits/byte). It takes the middle
            # width's place, so a step costs the same.
            w = ws[int(torch.randint(len(ws) - 1, (1,)))]
            sched = (w,) * (L - k) + (1.0,) * k
            sample = sample[:2] + [sched]
    valid = y != -100
    # the predictor reads a prompt and judges its continuation, as auto uses it: a random prompt
    # length P per step, pooled over positions < P, targets from the losses at positions >= P
    T = x.shape[1]
    lo = max(1, min(4, T // 2))
    P = lo + int(torch.randint(max(1, T // 2 - lo + 1), (1,)))
    cont = valid.clone()
    cont[:, :P] = False
    n_cont = cont.sum(1)
    heads: ElasticHeads = model.elastic
    lm_terms, per_example, full_ce, full_hs, exit_term = [], {}, None, None, None
    for w in sample:
        h, hs = run_layers(model, x, list(w) if isinstance(w, tuple) else [w] * L, keep=True)
        logits = model.head(model.norm(h))
        ce = F.cross_entropy(
            logits.float().view(-1, logits.shape[-1]), y.view(-1), ignore_index=-100, reduction="none"
        ).view(y.shape)
        lm_terms.append(ce.sum() / valid.sum().clamp(min=1))
        if isinstance(w, tuple):  # an expansion schedule: its LM loss only
            continue
        per_example[w] = ((ce.detach() * cont).sum(1) / n_cont.clamp(min=1)).float()
        if w == 1.0:
            full_ce, full_hs = lm_terms[-1], hs
            if ecfg.exit_loss_weight > 0 or ecfg.exit_distill_weight > 0:
                exit_term = exit_loss(model, hs, logits, y, ecfg)
    total = torch.stack(lm_terms).mean()
    if exit_term is not None:
        total = total + exit_term
    if ecfg.predictor_weight > 0 and len(sample) > 1:
        k = ecfg.predictor_layer
        src = (model.embed(x) if k == 0 else full_hs[k - 1])[:, :P]  # causal: = the prompt alone
        m = valid[:, :P].unsqueeze(-1).to(src.dtype)
        pooled = ((src.detach() * m).sum(1) / m.sum(1).clamp(min=1)).float()
        logits = heads.predictor_logits(pooled)  # [B, L, W]
        scored = (n_cont > 0) & (m.sum((1, 2)) > 0)  # rows with a prompt and a continuation
        terms = []
        for w in (w for w in sample[1:] if not isinstance(w, tuple)):
            j = ws.index(w)
            ok = predictor_target(per_example[w], per_example[1.0], ecfg)
            if scored.any():
                terms.append(
                    F.binary_cross_entropy_with_logits(
                        logits[scored, k:, j], ok[scored, None].expand(-1, L - k)
                    )
                )
        if terms:
            total = total + ecfg.predictor_weight * torch.stack(terms).mean()
    return total, full_ce


def _gate_bce(
    model, hs: list[torch.Tensor], agree: torch.Tensor, valid: torch.Tensor, width: float
) -> torch.Tensor:
    """Mean over layers of the width's gate BCE against that width's own agreement (from
    layer_agreement), on the non-padding positions `valid`."""
    return sum(
        F.binary_cross_entropy_with_logits(model.elastic.gate_logit(i, h, width)[valid], a[valid].float())
        for i, (h, a) in enumerate(zip(hs, agree))
    ) / max(1, len(hs))


class GateFit:
    """One gate-calibration step's loss, shared by the `gate-calibration` phase objective and
    `calibrate_gate`. Every `reuse` steps it reads one (x, y) batch and runs the frozen model at
    full width and, with per-width gates, at one narrow width in turn (its labels: agreement with
    that width's own last layer); every step is the gates' BCE over the non-padding positions
    (y != -100) of the current batch. The batch is state: a run resumed inside a reuse cycle
    recomputes the frozen model's states from it, so it sees what an uninterrupted run saw.
    `full=False` fits the narrow widths' gates only."""

    def __init__(self, model, reuse: int = 1, full: bool = True):
        heads: ElasticHeads = model.elastic
        if not full and not heads.narrow:
            raise AdambaError("no per-width gates to calibrate (elastic.gate_per_width is off)")
        if reuse < 1:
            raise AdambaError(f"gate calibration reuse={reuse} must be >= 1")
        self.model, self.reuse, self.full = model, reuse, full
        self.batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self.fwd: dict | None = None

    def params(self) -> list[torch.nn.Parameter]:
        heads = self.model.elastic
        return list(heads.width_gates.parameters()) + (list(heads.gates.parameters()) if self.full else [])

    def loss(self, step: int, next_batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(the loss to backprop, the one logged: full-width gates, else the narrow ones)."""
        heads = self.model.elastic
        if step % self.reuse == 0 or self.batch is None:
            self.batch, self.fwd = next_batch(), None
        w_n = heads.narrow[(step // self.reuse) % len(heads.narrow)] if heads.narrow else None
        if self.fwd is None:  # the frozen model's states and labels for the current batch
            x, _ = self.batch
            widths = ([1.0] if self.full else []) + ([w_n] if w_n is not None else [])
            was_training = self.model.training
            self.model.eval()
            try:
                self.fwd = {w: layer_agreement(self.model, x, w) for w in widths}
            finally:
                self.model.train(was_training)
        valid = self.batch[1] != -100
        per = {w: _gate_bce(self.model, *self.fwd[w], valid, w) for w in self.fwd}
        return sum(per.values()), per[1.0 if self.full else w_n]

    def state_dict(self) -> dict:
        return {"batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.batch, self.fwd = state.get("batch"), None


def calibrate_gate(
    model, batches, steps: int, lr: float = 3e-3, on_step=None, full: bool = True, reuse: int = 1
) -> list[float]:
    """Fit the ConfidenceGate with the LM frozen, outside a run (benchmarks refit gates on trained
    models with it; a run does the same as its `gate-calibration` phase): `steps` Adam steps of
    `GateFit`'s loss, the learning rate decaying from `lr` to 0 on a cosine.

    Why a phase after training: in-loop gate targets come from an LM that is still moving and
    from narrow sandwich widths, and they are scored on a small token sample; measured on Tiny
    Shakespeare and the stdlib corpus at the default 0.95, the in-loop gate skips 0.1-0.2% of
    layer FLOPs and the calibrated one 12-21% (docs/experiments/elastic.md). Why reuse and
    decay: the forward (an LM-head matmul per layer) costs far more than a gate step, and the
    gate is underfitted at one step per forward; measured on Tiny Shakespeare, 8 steps per
    forward with the decay fit a better gate (validation BCE 0.431 against 0.441) from half the
    forwards; the exit curve barely moves, so the gain is mostly the phase's time (-30 to -40%).
    Returns the per-step losses (full-width gates, else the narrow ones)."""
    fit = GateFit(model, reuse, full)
    # AdamW without decay is Adam; foreach, as the trainer's optimizer, so the gate-calibration
    # phase of a run computes what this function does (tests/train/test_elastic.py)
    opt = torch.optim.AdamW(fit.params(), lr, betas=(0.9, 0.999), weight_decay=0.0, foreach=True)
    losses = []
    for step in range(steps):
        cur = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = cur
        total, logged = fit.loss(step, lambda: next(batches))
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()
        losses.append(float(logged.detach()))
        if on_step is not None:
            on_step(step + 1, losses[-1], cur)
    return losses
