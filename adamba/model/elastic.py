"""Elastic compute: Matryoshka widths, sandwich training, ConfidenceGate early exit and
expansion, LayerDimPredictor, compute modes and per-token FLOPs accounting.

Width scheme (exact sub-networks). A width w from `elastic.widths` keeps, in every attention
layer, the first hq = round(w * n_head) query heads (at least one) and the KV heads those heads
read in GQA order (query head i reads KV head i // group, so the first ceil(hq / group) KV
heads); in every MLP the first round(w * hidden) units. The weights are sliced views (F.linear on
row/column slices), the residual stream stays full width, the output projection reads the
matching input-column slice. Mamba2/KDA mixers stay full width. Width 1.0 takes the plain code
path, bit for bit. A key of KV head h is the same at every width, so one cache serves all widths
(adamba/model/cache.py).

Training (`elastic_loss`, used by the trainer when `elastic.enabled`): per step the full width,
the smallest and one random middle width (the "sandwich" rule), each with its own mean LM loss;
the LM loss is their average. On `expand_train` of the steps the middle member is instead an
expansion schedule (a narrow width, full width in the last `expand_layers` layers), the one
auto's expansion runs. Two small heads learn from the same passes, on detached inputs,
so their losses cannot move the LM weights:
  * ConfidenceGate, one small head per layer (except the last; Linear or a `gate_hidden` MLP):
    BCE against "the final norm + LM head applied to this layer's hidden state gives the same
    argmax as the full-width model's final layer", per token, padding (-100) masked, on a
    random `gate_token_frac` of positions (each scored position costs one LM-head matmul per
    layer). With `gate_per_width` every narrow width has its own set, fitted only by the
    calibration phase.
  * Early-exit loss (`exit_loss_weight` > 0, LayerSkip / CALM style): on the same scored
    positions of the full-width pass, the cross-entropy of every intermediate layer's hidden
    state through the shared final norm + LM head, averaged over layers. Unlike the two heads
    this term does move the LM weights: it makes early layers predictive, which is what gives
    the gate tokens it can safely exit (without it a small model's early layers rarely agree
    with its last one). `exit_distill_weight` adds KL(final layer || layer l) with the final
    distribution detached, which teaches agreement with the final layer rather than the label.
  * LayerDimPredictor, a 2-layer MLP on the mean (over non-padding positions) of the full-width
    hidden state after `predictor_layer` layers over a prompt (the first P positions, P random
    per step in [4, T/2], as auto reads only the prompt), emitting for every later layer and
    every width the probability that the width is good enough. Target, per example and per
    sampled width w: 1 if the example's mean loss over the continuation (positions >= P) at
    uniform width w is <= its full-width loss there + predictor_tol nats (default 0.04, about 1%
    of real-text losses; `predictor_tol_nats=false`: <= (1 + predictor_tol) x the full-width
    loss, which is strict on low-loss text and loose on high-loss text, so on the seed's
    easy/hard mix it sends the easy documents to full width; benchmarks/README.md). The target is a
    uniform-width schedule and auto applies one: the smallest width whose probability, averaged
    over the predicted layers, is above 1/2 (per-layer targets would need L x W passes, and the
    sandwich trains uniform schedules plus the expansion one).

Gate calibration (`calibrate_gate`, the trainer's `elastic.calibrate_steps` phase after the LM
steps): the gate refitted with the LM frozen, on the final model's own full-width agreement at
every position, and each narrow width's gates on that width's agreement with its own last layer.
Measured, this is what makes the gate usable: the in-loop gate chases a moving LM on a token
sample and exits almost nothing at 0.95 (benchmarks/README.md).

Inference (`ElasticRunner`): prompt prefill at the mode's widths (no exit), then one token at a
time. auto: the predictor picks the width once from the prompt (reading it through the first
`predictor_layer` layers at full width); after each layer the gate g is read: g > exit_threshold exits the
token (final norm + head on this hidden state); g < expand_threshold at a layer inside the last
`expand_layers` switches the remaining layers to full width. Skipped layers' KV (CALM-style):
an exited token's hidden state is copied forward as the input of every skipped layer, which
computes and caches only its K/V from it (M/K layers advance their state on it), so later tokens
find an entry at every layer. Fixed modes (ghost / whisper / normal / think) run one width in
every layer and never exit. Both decode a batch of sequences together: auto runs each layer in
one pass over every row at a shared width, rows of narrower predicted widths masked down to
theirs, the few wider or expanded rows recomputed as small groups (attention-only models;
`ElasticRunner._plan_rows`; on a GPU `_step_dense` masks every row to its width in one pass
instead, with no host sync inside a step). `batched_exits` replays
exit decoding over whole sequences in n_layer batched passes (same decisions, same logits), which
is how the benchmark scores the exit rule on a whole validation split.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from adamba.config import ElasticConfig, ModelConfig
from adamba.errors import AdambaError
from adamba.model.cache import MatryoshkaKVCache, RowView
from adamba.model.lm import sample_next
from adamba.nn.norm import rms_norm

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


def predictor_target(loss_w: torch.Tensor, loss_full: torch.Tensor, ecfg: ElasticConfig) -> torch.Tensor:
    """1.0 where a width is good enough: its mean loss (nats/token, per example) within the
    tolerance of the full width's: absolute (nats) with `predictor_tol_nats` (the default), else
    relative."""
    tol = ecfg.predictor_tol
    bound = loss_full + tol if ecfg.predictor_tol_nats else (1.0 + tol) * loss_full
    return (loss_w <= bound).float()


def elastic_loss(model, x: torch.Tensor, y: torch.Tensor, ecfg: ElasticConfig):
    """The training loss of one step: (total loss to backprop, full-width LM loss for logging).

    Random choices (middle width, scored gate positions) use the global torch RNG, which the
    trainer checkpoints, so resumed runs stay exact."""
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
    lm_terms, per_example, full_ce = [], {}, None
    gate_terms, exit_terms = [], []
    full_argmax, full_hs = None, None
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
            full_ce = lm_terms[-1]
            full_argmax = logits.detach().argmax(-1)
            full_hs = hs
        # gate targets (and exit-loss terms) on a random subset of real (non-padding) positions
        sel = valid & (torch.rand(y.shape, device=y.device) < ecfg.gate_token_frac)
        train_exit = w == 1.0 and (ecfg.exit_loss_weight > 0 or ecfg.exit_distill_weight > 0)
        train_gate = ecfg.gate_weight > 0 and (w == 1.0 or not ecfg.gate_full_only)
        if sel.any() and (train_gate or train_exit):
            tgt_arg = full_argmax[sel]
            if train_exit and ecfg.exit_distill_weight > 0:
                teacher = logits.detach()[sel].float().log_softmax(-1)
            for li in range(L - 1):
                hl = hs[li][sel]
                with torch.set_grad_enabled(train_exit and torch.is_grad_enabled()):
                    lg = model.head(model.norm(hl if train_exit else hl.detach()))
                if train_exit:  # LayerSkip-style: teach layer li's state to predict the next token
                    term = ecfg.exit_loss_weight * F.cross_entropy(lg.float(), y[sel])
                    if ecfg.exit_distill_weight > 0:  # ... and to agree with the final layer
                        kl = F.kl_div(
                            lg.float().log_softmax(-1), teacher, log_target=True, reduction="batchmean"
                        )
                        term = term + ecfg.exit_distill_weight * kl
                    exit_terms.append(term)
                if train_gate:
                    agree = (lg.detach().argmax(-1) == tgt_arg).float()
                    gate_terms.append(
                        F.binary_cross_entropy_with_logits(heads.gate_logit(li, hl.detach()), agree)
                    )
    total = torch.stack(lm_terms).mean()
    if exit_terms:
        total = total + torch.stack(exit_terms).mean()
    if gate_terms:
        total = total + ecfg.gate_weight * torch.stack(gate_terms).mean()
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


@torch.no_grad()
def layer_agreement(model, x: torch.Tensor, width: float = 1.0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Hidden states at `width` after every layer but the last, and a [L-1, B, T] bool: does
    that layer's state, through the final norm + LM head, already give the final argmax of
    the same width?"""
    h, hs = run_layers(model, x, [width] * len(model.blocks), keep=True)
    final = model.head(model.norm(h)).argmax(-1)
    return hs[:-1], torch.stack([model.head(model.norm(s)).argmax(-1) == final for s in hs[:-1]])


@torch.no_grad()
def batched_exits(
    model, idx: torch.Tensor, widths: list[float], threshold: float, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Early-exit decoding of whole sequences in n_layer batched passes, exactly as
    ElasticRunner decodes them token by token (tests check it): layer j's output for a token
    depends only on layer-j K/V of earlier tokens, so every token's gate decision at layer j is
    known once layer j has run for all. Positions before `start` (the prompt) never exit.
    Returns (final hidden [B, T, d]: exited tokens keep their exit state; exit layer [B, T],
    n_layer - 1 = ran every layer). Used to score the exit rule on a whole validation split."""
    L = len(model.blocks)
    x = model.embed(idx)
    exit_at = torch.full(idx.shape, L - 1, device=idx.device)
    may_exit = (torch.arange(idx.shape[1], device=idx.device) >= start).expand_as(exit_at)
    frozen = x
    for j, (block, w) in enumerate(zip(model.blocks, widths)):
        x = block(x, None, w)
        x = torch.where((exit_at < j)[..., None], frozen, x)  # exited: copy-forward input
        if j < L - 1:
            g = torch.sigmoid(model.elastic.gate_logit(j, x, w))
            go = may_exit & (exit_at == L - 1) & (g > threshold)
            exit_at = torch.where(go, j, exit_at)
            frozen = torch.where(go[..., None], x, frozen)
    return x, exit_at


def _gate_bce(
    model, hs: list[torch.Tensor], agree: torch.Tensor, valid: torch.Tensor, width: float
) -> torch.Tensor:
    """Mean over layers of the width's gate BCE against that width's own agreement (from
    layer_agreement), on the non-padding positions `valid`."""
    return sum(
        F.binary_cross_entropy_with_logits(model.elastic.gate_logit(i, h, width)[valid], a[valid].float())
        for i, (h, a) in enumerate(zip(hs, agree))
    ) / max(1, len(hs))


def calibrate_gate(
    model, batches, steps: int, lr: float = 3e-3, on_step=None, full: bool = True, reuse: int = 1
) -> list[float]:
    """The gate-calibration phase: fit the ConfidenceGate with the LM frozen.

    Why a phase after training: in-loop gate targets come from an LM that is still moving and
    from narrow sandwich widths, and they are scored on a small token sample; measured on Tiny
    Shakespeare and the stdlib corpus at the default 0.95, the in-loop gate skips 0.1-0.2% of
    layer FLOPs and the calibrated one 12-21% (benchmarks/README.md, "Elastic compute"). Every
    `reuse` steps read one (x, y) batch and run the frozen model at full width and, with
    per-width gates, at one narrow width in turn (its labels: agreement with that width's own
    last layer); each step is one Adam step on the gates' BCE over every non-padding position
    (y != -100) of the current batch, the learning rate decaying from `lr` to 0 on a cosine.
    Why reuse and decay: the forward (an LM-head matmul per layer) costs far more than a gate
    step, and the gate is underfitted at one step per forward; measured on Tiny Shakespeare
    (benchmarks/README.md), 8 steps per forward with the decay fit a better gate (validation
    BCE 0.431 against 0.441) from half the forwards; the exit curve barely moves, so the gain
    is mostly the phase's time (-30 to -40%). `full=False` fits the narrow widths' gates only
    (a model whose full-width gates are calibrated already). Returns the per-step losses
    (full-width gates, else the narrow ones)."""
    heads: ElasticHeads = model.elastic
    if not full and not heads.narrow:
        raise AdambaError("no per-width gates to calibrate (elastic.gate_per_width is off)")
    if reuse < 1:
        raise AdambaError(f"gate calibration reuse={reuse} must be >= 1")
    params = list(heads.width_gates.parameters()) + (list(heads.gates.parameters()) if full else [])
    opt = torch.optim.Adam(params, lr)
    losses = []
    was_training = model.training
    model.eval()
    try:
        for step in range(steps):
            if step % reuse == 0:  # a fresh batch: the frozen model's states and labels
                x, y = next(batches)
                valid = y != -100
                w_n = heads.narrow[(step // reuse) % len(heads.narrow)] if heads.narrow else None
                widths = ([1.0] if full else []) + ([w_n] if w_n is not None else [])
                fwd = {w: layer_agreement(model, x, w) for w in widths}
            cur = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
            for g in opt.param_groups:
                g["lr"] = cur
            per = {w: _gate_bce(model, *fwd[w], valid, w) for w in fwd}
            total = sum(per.values())
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            losses.append(float(per[1.0 if full else w_n].detach()))
            if on_step is not None:
                on_step(step + 1, losses[-1], cur)
    finally:
        model.train(was_training)
    return losses


# ---------------------------------------------------------------- inference


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


@dataclass
class TokenStats:
    """Per-token accounting collected by a runner."""

    flops: list[float] = field(default_factory=list)
    full_flops: list[float] = field(default_factory=list)
    head_flops: list[float] = field(default_factory=list)  # the LM head, paid once by every token
    exit_layer: list[int] = field(default_factory=list)
    expanded: list[bool] = field(default_factory=list)
    widths: list[list[float]] = field(default_factory=list)

    def summary(self, n_layer: int) -> dict:
        n = max(1, len(self.flops))
        hist = [0] * n_layer
        for e in self.exit_layer:
            hist[e] += 1
        return {
            "tokens": len(self.flops),
            "flops_rel": sum(self.flops) / max(1e-9, sum(self.full_flops)),
            # the same without the LM head: what the layers (incl. gates, copy-forward K/V) cost
            "layer_flops_rel": (sum(self.flops) - sum(self.head_flops))
            / max(1e-9, sum(self.full_flops) - sum(self.head_flops)),
            "exit_rate": sum(e < n_layer - 1 for e in self.exit_layer) / n,
            "expand_rate": sum(self.expanded) / n,
            "exit_hist": hist,
            "mean_width": sum(sum(w) / len(w) for w in self.widths) / n if self.widths else 1.0,
        }


def mixer_matmul_flops(block) -> float:
    """Per-token FLOPs of an M/K mixer: 2 x its matrix weights (full width, like the state)."""
    return 2 * sum(p.numel() for p in block.mixer.parameters() if p.ndim >= 2)


class ElasticRunner:
    """Elastic decoding: `prefill(prompt)` then `step(token)`, for `batch` sequences together.
    Fixed-width policies (ghost / whisper / normal / think) run the plain batched path. Adaptive
    policies (auto: per-row predicted width, per-token exit and expansion) decode a batch by
    running each layer's attention on every row at a shared width (narrower rows masked, exited
    rows adding their copy-forward K/V) and its MLP on the live rows, the few wider or expanded
    rows as small groups; each row gets the decisions and logits batch-1 decoding gives it, up
    to float rounding (tests). Batched adaptive decoding needs an attention-only model."""

    def __init__(self, model, ecfg: ElasticConfig, policy: Policy, batch: int = 1):
        if policy.widths is not None:
            for w in policy.widths:
                check_width(w, ecfg)
        for name in ("exit_threshold", "expand_threshold"):
            v = getattr(policy, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise AdambaError(f"{name.replace('_', ' ')} {v} must lie in [0, 1]")
        if (policy.widths is None or policy.exit_threshold is not None) and not hasattr(model, "elastic"):
            raise AdambaError("the model has no gate/predictor heads (trained without elastic.enabled)")
        adaptive = (
            policy.widths is None or policy.exit_threshold is not None or policy.expand_threshold is not None
        )
        if batch != 1 and adaptive and any(b.kind != "A" for b in model.blocks):
            raise AdambaError(
                "early exit, expansion and the width predictor decode a batch only on attention-only "
                "models (Mamba2/KDA states are not split by row); decode one sequence at a time (batch 1)"
            )
        self.model, self.ecfg, self.policy, self.batch = model, ecfg, policy, batch
        self.rows_mode = batch != 1 and adaptive  # per-row widths / exits: layers run on row subsets
        self.row_widths: list[float] = [1.0] * batch
        # batched adaptive decoding (_plan_rows): shared width, wider row groups, per-row masks
        self.w_a = 1.0  # the width every row's pass runs at
        self.max_wide = max(1, batch // 16)  # at most this many rows above w_a (tests vary it)
        self.dense: bool | None = None  # _step_dense (no row subsets) or _step_rows; None: GPUs dense
        self.row_w = self.in_a = None  # [B] row widths, rows at or below w_a
        self.masks_a = None  # per-layer row masks of heads / units, when rows below w_a exist
        self.dense_plan: dict | None = None  # _step_dense's tables, built at its first step
        self.wide: list = []  # (width, rows) above w_a, run as groups of their own
        self.other_widths: list = []  # (width, rows) not at w_a: they read their width's gate
        self.L = len(model.blocks)
        self.cfg: ModelConfig = model.cfg
        self.stats = TokenStats()
        self.widths: list[float] = [1.0] * self.L
        self.state: list = []
        self.pos = 0  # tokens seen so far

    # --- FLOPs model: 2 x multiply-adds of every matmul a token runs
    def _stored_heads(self, i: int, row_width: float) -> int:
        """KV heads a batch-1 runner of this row width stores at layer i (what the FLOPs model
        charges a row; a batch of mixed widths stores its widest row's heads for every row)."""
        a = self.model.blocks[i].mixer
        if self.policy.expand_threshold is not None and i >= self.L - self.ecfg.expand_layers:
            row_width = 1.0  # expansion may widen this layer later: reserved at full width
        return a.heads_at(row_width)[1]

    def _layer_flops(self, i: int, w: float, ctx: int, n_store: int | None = None) -> float:
        block, d = self.model.blocks[i], self.cfg.d_model
        f = 0.0
        if block.kind == "A":
            a = block.mixer
            hq, _ = a.heads_at(w)
            if n_store is None:
                n_store = self.state[i].heads if self.state else a.n_kv_head
            f += 2 * d * a.head_dim * (hq + 2 * n_store) + 4 * hq * a.head_dim * ctx + 2 * hq * a.head_dim * d
        else:
            f += mixer_matmul_flops(block)
        if block.mlp is not None:
            f += 2 * d * block.mlp.units_at(w) * (3 if block.mlp.act == "swiglu" else 2)
        return f

    def _full_flops(self, ctx: int) -> float:
        total = 2 * self.cfg.d_model * self.cfg.vocab_size
        for block in self.model.blocks:
            d = self.cfg.d_model
            if block.kind == "A":
                a = block.mixer
                hd, H, K = a.head_dim, a.n_head, a.n_kv_head
                total += 2 * d * hd * (H + 2 * K) + 4 * H * hd * ctx + 2 * H * hd * d
            else:
                total += mixer_matmul_flops(block)
            if block.mlp is not None:
                total += 2 * d * block.mlp.hidden * (3 if block.mlp.act == "swiglu" else 2)
        return total

    def _new_state(self) -> list:
        p = next(self.model.parameters())
        out = []
        for i, block in enumerate(self.model.blocks):
            if block.kind == "A":
                a = block.mixer
                c = MatryoshkaKVCache(self.batch, a.n_kv_head, a.head_dim, p.device, p.dtype)
                w = max(self.row_widths) if self.rows_mode else self.widths[i]
                if self.policy.expand_threshold is not None and i >= self.L - self.ecfg.expand_layers:
                    w = 1.0  # expansion may widen this layer later: reserve full width now
                c.reserve_heads(a.heads_at(w)[1])
                out.append(c)
            else:
                out.append(block.mixer.init_state(self.batch, p.device, p.dtype))
        return out

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor) -> torch.Tensor:
        """Run the prompt [batch, T] (no exit); returns the last position's logits [batch, V]."""
        m = self.model
        if idx.shape[0] != self.batch:
            raise AdambaError(f"the prompt has {idx.shape[0]} rows; this runner decodes batch {self.batch}")
        pol = self.policy
        mask_h = mask_u = None
        if self.rows_mode:
            if pol.widths is not None and len(set(pol.widths)) > 1:
                raise AdambaError("batched adaptive decoding takes one width for every layer")
            self.row_widths = self.choose_width(idx) if pol.widths is None else [pol.widths[0]] * self.batch
            self._plan_rows(idx.device)
            self.dense_plan = None  # rebuilt for these rows at the first dense step
            self.widths = [max(self.row_widths)] * self.L  # the prompt: one pass at the widest row's
            if len(set(self.row_widths)) > 1:  # ... narrower rows masked down to their own width
                mask_h, mask_u = self._row_masks(self.widths[0])
        else:
            self.widths = [self.choose_width(idx)[0]] * self.L if pol.widths is None else list(pol.widths)
        self.state = self._new_state()
        x = m.embed(idx)
        for i, block in enumerate(m.blocks):
            if mask_h is None:
                x = block(x, self.state[i], self.widths[i])
            else:
                h = x + block.mixer(block.norm1(x), self.state[i], self.widths[i], mask_h[i])
                x = h + block.mlp(block.norm2(h), self.widths[i], mask_u[i])
        self.pos = idx.shape[1]
        return m.head(m.norm(x))[:, -1]  # all rows, as the plain model does (same bits)

    def _plan_rows(self, device) -> None:
        """Batched adaptive decoding's plan from the rows' widths: the shared width w_a that
        every step runs on all rows (rows of narrower widths masked down to theirs, exited rows
        computing only their copy-forward K/V), rows wider than w_a (and expanded rows) run on
        top of it as small row groups through row views of the caches. w_a is the smallest
        width with at most `max_wide` (batch/16) rows wider, so a few wide rows do not make every row pay
        their width, and a few narrow rows cost no separate pass."""
        ws = sorted(set(self.row_widths))
        self.w_a = next(w for w in ws if sum(r > w for r in self.row_widths) <= self.max_wide)
        self.row_w = torch.tensor(self.row_widths, device=device)
        self.masks_a = self._row_masks(self.w_a) if ws[0] < self.w_a else None
        self.wide = [(w, self.row_w == w) for w in ws if w > self.w_a]
        self.in_a = self.row_w <= self.w_a
        self.other_widths = [(w, self.row_w == w) for w in ws if w != self.w_a]

    def _width_masks(self, i: int, w: float, ws: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer i's 0/1 multipliers for a pass at width w, one per row width in ws: query heads
        [len(ws), hq, 1, 1] and MLP units [len(ws), 1, n] that keep a row of width ws[j] to its
        own (rows at or above w keep all of w's). Index them by each row's width."""
        p = next(self.model.parameters())
        a, mlp = self.model.blocks[i].mixer, self.model.blocks[i].mlp
        hq, n = a.heads_at(w)[0], mlp.units_at(w)
        kh = torch.tensor([a.heads_at(c)[0] for c in ws], device=p.device)
        ku = torch.tensor([mlp.units_at(c) for c in ws], device=p.device)
        heads = (torch.arange(hq, device=p.device) < kh[:, None]).to(p.dtype)[:, :, None, None]
        return heads, (torch.arange(n, device=p.device) < ku[:, None]).to(p.dtype)[:, None, :]

    def _row_masks(self, w: float) -> tuple[list, list]:
        """Per layer, the rows' masks (`_width_masks`) for a pass at width w: [B, hq, 1, 1] and
        [B, 1, n]."""
        ws = sorted(set(self.row_widths))
        idx = torch.tensor([ws.index(r) for r in self.row_widths], device=self.row_w.device)
        tables = [self._width_masks(i, w, ws) for i in range(self.L)]
        return [h[idx] for h, _ in tables], [u[idx] for _, u in tables]

    def choose_width(self, idx: torch.Tensor) -> list[float]:
        """The LayerDimPredictor's pick for each prompt row: the smallest width whose predicted
        'good enough' probability, averaged over the predicted layers, is above 1/2 (else full).
        The first `predictor_layer` layers run at full width to read the prompt (a throwaway
        pass, no cache); the schedule is then uniform, the kind of schedule sandwich training
        teaches (measured: a per-layer mix after a full-width first layer scored worse than ghost)."""
        m, k = self.model, self.ecfg.predictor_layer
        x = m.embed(idx)
        for i in range(k):
            x = m.blocks[i](x, None, 1.0)
        probs = torch.sigmoid(m.elastic.predictor_logits(x.float().mean(1)))[:, k:].mean(1)  # [B, W]
        ws = m.elastic.widths
        return [next((w for w, p in zip(ws, row) if p > 0.5), 1.0) for row in probs.tolist()]

    def _copy_forward_flops(self, i: int, n_store: int | None = None) -> float:
        """FLOPs of a skipped layer's copy-forward: its K/V projections (M/K: the whole mixer)."""
        block = self.model.blocks[i]
        if block.kind != "A":
            return mixer_matmul_flops(block)
        n = n_store if n_store is not None else self.state[i].heads if self.state else block.mixer.n_kv_head
        return 2 * self.cfg.d_model * block.mixer.head_dim * 2 * n

    def _copy_forward(self, i: int, h: torch.Tensor, rows: torch.Tensor | None = None) -> float:
        """CALM-style KV for a skipped layer: its input is the exit hidden state h (of `rows`
        only, in batched adaptive decoding, where the caller advances the cache)."""
        block = self.model.blocks[i]
        xn = block.norm1(h)
        if block.kind != "A":
            block.mixer(xn, self.state[i])
            return self._copy_forward_flops(i)
        a, cache = block.mixer, self.state[i]
        n, hd, B = cache.heads, a.head_dim, h.shape[0]
        wt = a.qkv_proj.weight
        k = F.linear(xn, wt[a.q_dim : a.q_dim + n * hd]).view(B, -1, n, hd).transpose(1, 2)
        v = (
            F.linear(xn, wt[a.q_dim + a.kv_dim : a.q_dim + a.kv_dim + n * hd])
            .view(B, -1, n, hd)
            .transpose(1, 2)
        )
        if a.qk_norm:
            k = rms_norm(k, a.k_norm_weight, a.eps)
        if a.rotary is not None:
            k = a.rotary(k, cache.length)
        if rows is None:
            cache.append(k, v)
        else:
            cache.write_rows(rows, k, v)
        return self._copy_forward_flops(i)

    @torch.no_grad()
    def step(self, tok: torch.Tensor) -> torch.Tensor:
        """One token per sequence [batch, 1] through the model under the policy; returns logits
        [batch, V]. Stats are per step (every sequence of a fixed-width batch costs the same)."""
        if self.rows_mode:
            dense = self.dense if self.dense is not None else tok.device.type != "cpu"
            return self._step_dense(tok) if dense else self._step_rows(tok)
        m, pol, L, d = self.model, self.policy, self.L, self.cfg.d_model
        self.pos += 1
        ctx = self.pos
        x = m.embed(tok)
        flops, exit_at, expanded, used = 0.0, L - 1, False, []
        for i, block in enumerate(m.blocks):
            w = 1.0 if expanded else self.widths[i]
            x = block(x, self.state[i], w)
            flops += self._layer_flops(i, w, ctx)
            used.append(w)
            if not self._gate_at(i):
                continue
            g = float(torch.sigmoid(m.elastic.gate_logit(i, x, w)))
            flops += m.elastic.gate_flops
            if pol.exit_threshold is not None and g > pol.exit_threshold:
                exit_at = i
                for j in range(i + 1, L):
                    flops += self._copy_forward(j, x)
                break
            if (
                pol.expand_threshold is not None
                and not expanded
                and i + 1 >= L - self.ecfg.expand_layers
                and g < pol.expand_threshold
                and any(wj < 1.0 for wj in self.widths[i + 1 :])
            ):
                expanded = True
        logits = m.head(m.norm(x[:, -1]))
        head_flops = 2 * d * self.cfg.vocab_size
        flops += head_flops
        s = self.stats
        s.head_flops.append(head_flops)
        s.flops.append(flops)
        s.full_flops.append(self._full_flops(ctx))
        s.exit_layer.append(exit_at)
        s.expanded.append(expanded)
        s.widths.append(used)
        return logits

    def _step_rows(self, tok: torch.Tensor) -> torch.Tensor:
        """Batched adaptive step: the same decisions and logits as batch-1 `step` for every row
        (tests). Each layer runs its attention on every row at the shared width w_a
        (`_plan_rows`; rows of narrower widths masked down to theirs), exited rows reading their
        frozen exit state, which is their copy-forward K/V, so no cache is gathered; rows wider
        than w_a and expanded rows are recomputed on top as small groups through row views of
        the caches. The MLP runs on the live rows only. The wasted work (exited rows' queries
        and attention, narrow rows masked at w_a) is not charged: the FLOPs are batch-1's per
        token. Stats get one entry per row."""
        m, pol, L, B = self.model, self.policy, self.L, self.batch
        self.pos += 1
        ctx = self.pos
        x = m.embed(tok)
        dev = tok.device
        w_a, row_w = self.w_a, self.row_w
        live = torch.ones(B, dtype=torch.bool, device=dev)
        expanded = torch.zeros(B, dtype=torch.bool, device=dev)
        exit_at = torch.full((B,), L - 1, device=dev)
        ran_narrow = torch.full((B,), L, device=dev)  # layers run before an expansion to full width
        thr_exit = 2.0 if pol.exit_threshold is None else pol.exit_threshold  # 2: never
        thr_expand = -1.0 if pol.expand_threshold is None else pol.expand_threshold  # -1: never
        can_grow = row_w < 1.0
        any_expanded = False
        all_live = True  # no row has exited yet (Python flags spare a tensor op per check)
        for i, block in enumerate(m.blocks):
            cache = self.state[i]
            xn = block.norm1(x)
            mask_h = self.masks_a[0][i] if self.masks_a else None
            a = block.mixer(xn, RowView(cache, None), w_a, mask_h)  # every row, no gather
            groups = [(w, live & sel & ~expanded) for w, sel in self.wide]
            if any_expanded:
                groups.append((1.0, live & expanded))
            groups = [(w, sel.nonzero().flatten()) for w, sel in groups]
            groups = [(w, rows) for w, rows in groups if len(rows)]
            for w, rows in groups:  # wider rows: their own width, their rows' caches
                a = a.index_copy(0, rows, block.mixer(xn[rows], RowView(cache, rows), w))
            h = x + a
            mask_u = self.masks_a[1][i] if self.masks_a else None
            if not groups and all_live and not self.wide:
                x = h + block.mlp(block.norm2(h), w_a, mask_u)
            else:
                in_a = live & self.in_a & ~expanded if (self.wide or any_expanded) else live
                rows = in_a.nonzero().flatten()
                if len(rows):
                    hr = h[rows]
                    mu = mask_u[rows] if mask_u is not None else None
                    x = x.index_copy(0, rows, hr + block.mlp(block.norm2(hr), w_a, mu))
                for w, rows in groups:
                    hr = h[rows]
                    x = x.index_copy(0, rows, hr + block.mlp(block.norm2(hr), w))
            cache.advance(1)
            if not self._gate_at(i):
                continue
            g = torch.sigmoid(m.elastic.gate_logit(i, x, w_a))[:, -1]  # every row: cheaper than a gather
            others = [(w, live & sel & ~expanded) for w, sel in self.other_widths]
            if any_expanded:
                others.append((1.0, live & expanded))
            for w, sel in others:  # rows at another width read that width's gate
                rows = sel.nonzero().flatten()
                if len(rows):
                    g = g.index_copy(0, rows, torch.sigmoid(m.elastic.gate_logit(i, x[rows], w))[:, -1])
            if pol.exit_threshold is not None:
                go = live & (g > thr_exit)
                exit_at = torch.where(go, i, exit_at)
                live = live & ~go
                all_live = all_live and not bool(go.any())
            if pol.expand_threshold is not None and i + 1 >= L - self.ecfg.expand_layers:
                grow = live & (g < thr_expand) & ~expanded & can_grow
                if bool(grow.any()):
                    expanded = expanded | grow
                    ran_narrow = torch.where(grow, i + 1, ran_narrow)
                    any_expanded = True
            if not all_live and not bool(live.any()):
                for j in range(i + 1, L):  # everyone exited: only copy-forward K/V remains
                    self._copy_forward(j, x, None)
                break
        return self._finish_rows(m.head(m.norm(x[:, -1])), exit_at, ran_narrow, expanded, ctx)

    def _finish_rows(self, logits, exit_at, ran_narrow, expanded, ctx: int) -> torch.Tensor:
        """A batched adaptive step's per-row stats (batch-1's FLOPs for each row's path)."""
        B, head_flops = self.batch, 2 * self.cfg.d_model * self.cfg.vocab_size
        full = self._full_flops(ctx)
        s = self.stats
        cost: dict = {}
        for rw, e, k in zip(self.row_widths, exit_at.tolist(), ran_narrow.tolist()):
            if (rw, e, k) not in cost:
                cost[rw, e, k] = self._row_flops(rw, e, k, ctx) + head_flops
            s.flops.append(cost[rw, e, k])
            # layers before an expansion ran at the row's width, the rest at full width
            s.widths.append([rw] * min(k, e + 1) + [1.0] * max(0, e + 1 - k))
        s.head_flops += [head_flops] * B
        s.full_flops += [full] * B
        s.exit_layer += exit_at.tolist()
        s.expanded += expanded.tolist()
        return logits

    def _dense_plan(self, device) -> dict:
        """`_step_dense`'s tables, built once per prefill (a list copied to a GPU each step would
        wait for its queue): per layer the width every row runs at and each current width's
        query heads and MLP units; a row's current width is its own, or full once expanded."""
        L, widths = self.L, self.row_widths
        expand = self.policy.expand_threshold is not None and min(widths) < 1.0
        ws = sorted(set(widths) | {1.0})
        layers = []
        for i in range(L):
            grows = expand and i >= L - self.ecfg.expand_layers
            w = 1.0 if grows else max(widths)
            masks = self._width_masks(i, w, ws) if grows or len(set(widths)) > 1 else None
            layers.append((w, masks))
        return {
            "expand": expand,
            "idx": torch.tensor([ws.index(w) for w in widths], device=device),
            "full": len(ws) - 1,
            "w_cur": torch.tensor(ws, device=device),
            "gate_ws": sorted(set(widths) | ({1.0} if expand else set())),
            "layers": layers,
        }

    def _step_dense(self, tok: torch.Tensor) -> torch.Tensor:
        """`_step_rows` without row subsets, for GPUs: there a decoding step is bound by kernel
        launches and every host sync (a row subset's size, "has anyone exited") stalls the
        queue, so each layer runs on every row at one width (the widest row's; full width in
        the expandable layers when expansion is on), each row masked down to its current width,
        exited rows kept by `torch.where` (their attention pass is their copy-forward K/V), and
        every decision stays on the device until the step's stats. Same decisions and logits
        as batch-1 decoding up to float rounding (tests force this path on a CPU)."""
        m, pol, L, B = self.model, self.policy, self.L, self.batch
        self.pos += 1
        ctx = self.pos
        x = m.embed(tok)
        dev = tok.device
        plan = self.dense_plan = self.dense_plan or self._dense_plan(dev)
        live = torch.ones(B, dtype=torch.bool, device=dev)
        expanded = torch.zeros(B, dtype=torch.bool, device=dev)
        exit_at = torch.full((B,), L - 1, device=dev)
        ran_narrow = torch.full((B,), L, device=dev)
        can_grow = self.row_w < 1.0
        for i, block in enumerate(m.blocks):
            w, masks = plan["layers"][i]
            cur = torch.where(expanded, plan["full"], plan["idx"])
            mask_h, mask_u = (masks[0][cur], masks[1][cur]) if masks else (None, None)
            h = x + block.mixer(block.norm1(x), RowView(self.state[i], None), w, mask_h)
            x = torch.where(live[:, None, None], h + block.mlp(block.norm2(h), w, mask_u), x)
            self.state[i].advance(1)
            if not self._gate_at(i):
                continue
            cw = plan["w_cur"][cur]
            g = torch.zeros(B, device=dev)
            for gw in plan["gate_ws"]:  # each row reads its current width's gate
                g = torch.where(cw == gw, torch.sigmoid(m.elastic.gate_logit(i, x, gw)[:, -1]).float(), g)
            if pol.exit_threshold is not None:
                go = live & (g > pol.exit_threshold)
                exit_at = torch.where(go, i, exit_at)
                live = live & ~go
            if plan["expand"] and i + 1 >= L - self.ecfg.expand_layers:
                grow = live & (g < pol.expand_threshold) & ~expanded & can_grow
                expanded = expanded | grow
                ran_narrow = torch.where(grow, i + 1, ran_narrow)
        return self._finish_rows(m.head(m.norm(x[:, -1])), exit_at, ran_narrow, expanded, ctx)

    def _gate_at(self, i: int) -> bool:
        """Is the gate read after layer i: with exits after every layer but the last, with
        expansion only where it can still act (the layer before each of the last
        `expand_layers`), else never; an unread gate costs nothing."""
        pol, L = self.policy, self.L
        if i >= L - 1:
            return False
        if pol.exit_threshold is not None:
            return True
        return pol.expand_threshold is not None and i + 1 >= L - self.ecfg.expand_layers

    def _row_flops(self, rw: float, e: int, k: int, ctx: int) -> float:
        """Batch-1's FLOPs for a row of width rw that exited after layer e (L-1: never) and ran
        full width from layer k on (L: never expanded), the LM head left out."""
        f = 0.0
        for i in range(self.L):
            n = self._stored_heads(i, rw)
            if i > e:
                f += self._copy_forward_flops(i, n)
                continue
            f += self._layer_flops(i, rw if i < k else 1.0, ctx, n)
            if self._gate_at(i):
                f += self.model.elastic.gate_flops
        return f

    def kv_bytes(self) -> tuple[int, int]:
        """(bytes held by the Matryoshka caches, bytes a full-width cache would hold)."""
        caches = [c for c in self.state if isinstance(c, MatryoshkaKVCache)]
        return sum(c.nbytes() for c in caches), sum(c.full_nbytes() for c in caches)


def policy_from_mode(model, ecfg: ElasticConfig, mode: str) -> Policy:
    require_elastic(ecfg)
    return mode_policy(mode, model, ecfg)


def sync(t: torch.Tensor) -> None:
    """Wait for the device's queued work (timings on a GPU); a no-op on a CPU."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


@torch.no_grad()
def teacher_forced(
    model, ecfg: ElasticConfig, policy: Policy, seqs: list[torch.Tensor], prompt_len: int, batch: int = 1
):
    """Score each sequence's continuation token by token under a policy, decoding `batch`
    sequences together (sequences of one length; the last group may be smaller).
    Returns (per-token CE in nats [N], target ids [N], argmax ids [N], stats summary, decode
    seconds), tokens in sequence order. The first continuation token is scored from the
    prefill (no step stats)."""
    ces, tgts, preds = [], [], []
    stats = TokenStats()
    seconds = 0.0
    if batch > 1 and len({len(q) for q in seqs}) > 1:
        raise AdambaError("batched scoring needs sequences of one length")
    for g in range(0, len(seqs), batch):
        grp = torch.stack(seqs[g : g + batch])
        B, n = grp.shape
        r = ElasticRunner(model, ecfg, policy, batch=B)
        logits = r.prefill(grp[:, :prompt_len])
        step_ce, step_pred = [], []
        for t in range(prompt_len, n):
            step_ce.append(F.cross_entropy(logits.float(), grp[:, t], reduction="none"))
            step_pred.append(logits.argmax(-1))
            if t + 1 < n:
                sync(grp)
                t0 = time.perf_counter()  # decode steps only: tokens/s of generation
                logits = r.step(grp[:, t : t + 1])
                sync(grp)  # a GPU's queued kernels count too
                seconds += time.perf_counter() - t0
        ces.append(torch.stack(step_ce, 1).flatten())  # [B, steps] -> row-major: sequence order
        preds.append(torch.stack(step_pred, 1).flatten())
        tgts.append(grp[:, prompt_len:].flatten())
        per_row = r.rows_mode or B == 1  # fixed-width batches log one stats entry per step
        for name in ("flops", "full_flops", "head_flops", "exit_layer", "expanded", "widths"):
            vals = getattr(r.stats, name)
            if per_row:  # step-major [steps x B] -> sequence order
                vals = [vals[k * B + b] for b in range(B) for k in range(len(vals) // B)]
            else:
                vals = [v for _ in range(B) for v in vals]  # every row costs the same
            getattr(stats, name).extend(vals)
    return torch.cat(ces), torch.cat(tgts), torch.cat(preds), stats.summary(len(model.blocks)), seconds


def model_ecfg(model) -> ElasticConfig:
    """The ElasticConfig a loaded model was trained with; a clear error for dense checkpoints."""
    if not hasattr(model, "elastic"):
        require_elastic(ElasticConfig(enabled=False))
    return model.elastic.ecfg


@torch.no_grad()
def generate(
    model,
    idx: torch.Tensor,
    mode: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    stop_ids: set[int] | None = None,
    generator: torch.Generator | None = None,
    runner_out: list | None = None,
):
    """LM.generate under a compute mode (batch 1): yields token ids [1]; the runner (with its
    per-token stats) is appended to `runner_out` when given."""
    ecfg = model_ecfg(model)
    r = ElasticRunner(model, ecfg, mode_policy(mode, model, ecfg))
    if runner_out is not None:
        runner_out.append(r)
    logits = r.prefill(idx)
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, generator)
        yield nxt
        if stop_ids and int(nxt[0]) in stop_ids:
            return
        logits = r.step(nxt[:, None])
