"""`adamba estimate`: what a phase plan costs before any GPU is rented.

Per phase, the FLOPs a training token costs are counted on the model itself (built on the meta
device, no memory) with the phase's own trainable set and objective (adamba/model/flops.py's
`train_flops`: attention over the mean causal context, Mamba2 / KDA projections and scans, MoE
router + active experts, frozen layers below the first trained one paying the forward only),
not 6N. Then time = tokens x FLOPs / (GPUs x peak x MFU) and cost = hours x GPUs x price; or the
other way round: the tokens a given number of hours buys, and the MFU a measured tokens/s implies.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from adamba.config import Config
from adamba.errors import AdambaError
from adamba.model.flops import MoE, TrainFlops, head_flops, train_flops
from adamba.nn.moe import MoE as MoELayer
from adamba.train.objectives import OBJECTIVES
from adamba.train.phases import Phase, plan, trainable

# Peak dense (no sparsity) BF16 tensor TFLOP/s per GPU, from the vendors' datasheets: NVIDIA
# H100 SXM and H200 SXM 989 (the "1,979 with sparsity" halved), A100 SXM 312, L40S 362, GeForce RTX
# 4090 165 (Ada whitepaper, FP32 accumulate, what PyTorch's bf16 matmuls use), AMD MI300X 1307.
GPUS = {"h100": 989.0, "h200": 989.0, "a100": 312.0, "l40s": 362.0, "4090": 165.0, "mi300x": 1307.0}


@dataclass
class Cluster:
    """The machines a plan is priced on."""

    gpus: int
    peak_tflops: float  # per GPU, dense bf16
    mfu: float  # model FLOPs utilization assumed for the plan's time
    price: float | None = None  # $ per GPU-hour

    @property
    def flops_per_s(self) -> float:
        """Model FLOPs the whole cluster does per second at the assumed MFU."""
        return self.gpus * self.peak_tflops * 1e12 * self.mfu


def hours_for(tokens: float, flops_per_token: float, c: Cluster) -> float:
    return tokens * flops_per_token / c.flops_per_s / 3600


def tokens_for(hours: float, flops_per_token: float, c: Cluster) -> float:
    return hours * 3600 * c.flops_per_s / flops_per_token


def implied_mfu(tokens_per_s: float, flops_per_token: float, c: Cluster) -> float:
    """The MFU a measured (or claimed) cluster-wide throughput means for this FLOPs count."""
    return tokens_per_s * flops_per_token / (c.gpus * c.peak_tflops * 1e12)


@dataclass
class Row:
    """One priced phase."""

    label: str  # the config it comes from (file stem)
    model: str  # its shape in a few characters
    phase: Phase
    params: int  # the model's (MoE counted as all its experts)
    trained: int  # the phase's trainable parameters
    active: int  # matrix parameters a token goes through, embedding left out: the N of 6N
    flops: TrainFlops  # per token
    tokens: float
    hours: float
    hours_given: bool = False  # hours came from --hours (tokens are what they buy)

    def cost(self, c: Cluster) -> float | None:
        return None if c.price is None else self.hours * c.gpus * c.price


@dataclass
class Surgery:
    """A change of model between two configs of a plan: checkpoint surgery, 0 hours."""

    change: str


def build(cfg: Config) -> nn.Module:
    """The model as training would build it, without memory (meta device)."""
    from adamba.model.elastic import attach_elastic
    from adamba.model.lm import LM

    with torch.device("meta"):
        model = LM(cfg.model)
        if cfg.elastic.enabled:
            attach_elastic(model, cfg.elastic)
    return model


def sizes(model: nn.Module, trained: set[str], moe: MoE | None) -> tuple[int, int, int]:
    """(parameters, trainable parameters, active matrix parameters of a token), each MLP counted
    as `moe`'s experts + router when given (an MLP's trainable share carries over to its experts)."""
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    n_trained = sum(params[n].numel() for n in trained)
    skip = {id(model.embed.weight)} | {id(p) for n, p in params.items() if n.startswith("elastic.")}
    active = sum(p.numel() for p in params.values() if p.ndim >= 2 and id(p) not in skip)
    for b in model.blocks:  # MoE layers: a token goes through top_k of the experts
        if isinstance(b.mlp, MoELayer):
            m = b.mlp
            active -= (m.gate_up_proj.numel() + m.down_proj.numel()) * (m.n_experts - m.top_k) // m.n_experts
    if moe is not None:
        for name, b in model.blocks.named_children():
            if b.mlp is None or isinstance(b.mlp, MoELayer):  # --moe prices dense MLPs only
                continue
            m, d = b.mlp, model.cfg.d_model
            dense = sum(p.numel() for p in m.parameters())
            expert = (3 if m.act == "swiglu" else 2) * d * (moe.units or m.hidden)
            everything, used = (
                moe.n_experts * expert + d * moe.n_experts,
                moe.top_k * expert + d * moe.n_experts,
            )
            share = sum(params[n].numel() for n in trained if n.startswith(f"blocks.{name}.mlp.")) / dense
            total += everything - dense
            n_trained += round(share * (everything - dense))
            active += used - dense
    return total, n_trained, active


def objective_flops(
    model: nn.Module, cfg: Config, ph: Phase, trained: set[str], moe: MoE | None
) -> TrainFlops:
    """Per-token FLOPs of a step of the phase's objective.

    lm: one training pass. elastic (adamba/train/elastic.py): a training pass at full width, one
    at the smallest and one at a middle width (their mean; an expansion schedule taking the
    middle's place is priced as the middle), plus the exit loss's LM head at every layer but the
    last on exit_token_frac of the positions; the predictor is left out (a 64-unit MLP).
    gate-calibration: every calibrate_reuse steps the frozen model's forward at full width and at
    one narrow width (their mean) with the LM head after every layer, spread over those steps,
    plus the gates' own training."""
    seq, e, L = ph.seq_len, cfg.elastic, len(model.blocks)
    if ph.objective == "elastic":
        ws = e.widths
        total = train_flops(model, seq, trained, 1.0, moe)
        if e.sandwich and len(ws) > 1:
            total = total + train_flops(model, seq, trained, ws[0], moe)
            mid = ws[1:-1]
            for w in mid:
                total = total + train_flops(model, seq, trained, w, moe).scale(1 / len(mid))
        if e.exit_loss_weight > 0 or e.exit_distill_weight > 0:
            h = head_flops(model) * (L - 1) * e.exit_token_frac
            total = total + TrainFlops(h, h, h if "head.weight" in trained else 0.0)
        return total
    if ph.objective == "gate-calibration":
        narrow = model.elastic.narrow
        fwd = TrainFlops()
        for w, share in [(1.0, 1.0)] + [(w, 1 / len(narrow)) for w in narrow]:
            f = train_flops(model, seq, set(), w, moe).forward + (L - 1) * head_flops(model)
            fwd.forward += share * f / e.calibrate_reuse
        g = model.elastic.gate_flops * (L - 1) * (2 if narrow else 1)
        return fwd + TrainFlops(g, g, g)
    return train_flops(model, seq, trained, 1.0, moe)


def describe_model(cfg: Config) -> str:
    m = cfg.model
    return f"d{m.d_model} x{m.n_layer} {m.pattern}"


def model_change(a: Config, b: Config) -> str | None:
    """What surgery turns one config's model into the next's, in a few words (None: the same)."""

    def flat(d: dict, pre: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{pre}{k}.") if isinstance(v, dict) else {f"{pre}{k}": v})
        return out

    fa, fb = flat(dataclasses.asdict(a.model)), flat(dataclasses.asdict(b.model))
    kinds = set(a.model.layer_types()) | set(b.model.layer_types())
    unused = {"attn.": "AK", "mamba.": "M", "kda.": "K"}  # tables no layer of either model reads
    skip = [t for t, used in unused.items() if not kinds & set(used)] + ["max_seq_len"]
    diff = [f"{k} {fa[k]} -> {fb[k]}" for k in fa if fa[k] != fb[k] and not k.startswith(tuple(skip))]
    if not diff:
        return None
    return ", ".join(diff[:3]) + (f" (+{len(diff) - 3} more)" if len(diff) > 3 else "")


def parse_hours(items: list[str]) -> dict[str, float]:
    """--hours PHASE=H items -> {phase: hours}."""
    out: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            h = float(value)
        except ValueError:
            h = math.nan
        if not sep or not name.strip() or not (math.isfinite(h) and h > 0):
            raise AdambaError(f"--hours {item!r}: expected PHASE=HOURS with hours > 0, e.g. --hours mamba=15")
        out[name.strip()] = h
    return out


def estimate(
    configs: list[tuple[str, Config]],
    cluster: Cluster,
    hours: dict[str, float] | None = None,
    moe: MoE | None = None,
) -> list[Row | Surgery]:
    """Price every phase of the configs, in order (a plan that changes model between configs
    gets a Surgery line there). A phase named in `hours` (by name, or config:name) is priced in
    hours, as a plan gives them, and shows the tokens they buy; the others take their configured
    steps or tokens, run by `cluster.gpus` processes (steps x batch x seq x accumulation x GPUs)."""
    hours = dict(hours or {})
    found: dict[str, list[str]] = {}
    out: list[Row | Surgery] = []
    prev: Config | None = None
    for label, cfg in configs:
        if prev is not None and (change := model_change(prev, cfg)):
            out.append(Surgery(change))
        prev = cfg
        model = build(cfg)

        for ph in plan(cfg, world=cluster.gpus):
            kind = OBJECTIVES[ph.objective]
            names = trainable(model, ph, kind.default_train, kind.never_train)
            flops = objective_flops(model, cfg, ph, names, moe)
            total, n_trained, active = sizes(model, names, moe)
            keys = [k for k in (ph.name, f"{label}:{ph.name}") if k in hours]
            for k in keys:
                found.setdefault(k, []).append(label)
            given = hours[keys[0]] if keys else None
            tokens = tokens_for(given, flops.total, cluster) if given else ph.steps * ph.tokens_per_step
            h = given or hours_for(tokens, flops.total, cluster)
            row = Row(
                label, describe_model(cfg), ph, total, n_trained, active, flops, tokens, h, given is not None
            )
            out.append(row)
    phases = [f"{r.label}:{r.phase.name}" for r in out if isinstance(r, Row)]
    for k in hours:
        if k not in found:
            raise AdambaError(f"--hours {k}=...: no phase named {k!r} (phases: {', '.join(phases)})")
        if len(found[k]) > 1:
            raise AdambaError(
                f"--hours {k}=...: phase {k!r} is in {' and '.join(found[k])}; say which, e.g. {found[k][0]}:{k}"
            )
    return out


def _n(x: float) -> str:
    """1.23B / 456M / 12.3k."""
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.3g}"


def duration(hours: float) -> str:
    """12.0 h / 35.2 min / 41 s."""
    if hours >= 1:
        return f"{hours:.1f} h"
    return f"{hours * 60:.1f} min" if hours * 60 >= 1 else f"{hours * 3600:.0f} s"


def table(
    rows: list[Row | Surgery], c: Cluster, gpu: str, tokens_per_s: float | None = None, moe: MoE | None = None
) -> list[str]:
    """The plan as `adamba estimate` prints it."""
    price = f", ${c.price:g} per GPU-hour" if c.price is not None else ""
    mfu_col = f"MFU@{_n(tokens_per_s)}/s" if tokens_per_s else ""
    lines = [
        f"{c.gpus} x {gpu} ({c.peak_tflops:g} TFLOP/s dense bf16 each), MFU {c.mfu:g}{price}"
        + (f"; every MLP counted as top-{moe.top_k} of {moe.n_experts} experts" if moe else ""),
        "",
        f"  {'phase':<24} {'objective':<16} {'model':<14} {'params':>7} {'trained':>7} "
        f"{'FLOP/tok':>8} {'6N':>6} {'tokens':>7} {'time':>8} {'cost':>8} {mfu_col:>11}".rstrip(),
    ]
    total_h = total_cost = total_tok = 0.0
    impossible = False
    for r in rows:
        if isinstance(r, Surgery):
            lines.append(f"  {'(surgery)':<24} {r.change}: 0 h")
            continue
        cost = r.cost(c)
        total_h, total_tok, total_cost = total_h + r.hours, total_tok + r.tokens, total_cost + (cost or 0.0)
        mfu = ""
        if tokens_per_s:
            m = implied_mfu(tokens_per_s, r.flops.total, c)
            impossible = impossible or m > 1
            mfu = f"{m:.3f}" + ("!" if m > 1 else "")
        lines.append(
            f"  {r.label + ':' + r.phase.name:<24} {r.phase.objective:<16} {r.model:<14} "
            f"{_n(r.params):>7} {_n(r.trained):>7} {_n(r.flops.total):>8} {_n(6 * r.active):>6} "
            f"{_n(r.tokens):>7} {duration(r.hours):>7}{'*' if r.hours_given else ' '} "
            f"{'' if cost is None else f'${cost:,.0f}':>8} {mfu:>11}".rstrip()
        )
    cost_total = f"${total_cost:,.0f}" if c.price is not None else ""
    lines.append(f"  {'total':<88} {_n(total_tok):>7} {duration(total_h):>7}  {cost_total:>8}".rstrip())
    lines += [
        "",
        "FLOP/tok: a training token of the phase's objective: forward, activation gradients down to",
        "the lowest trained layer, weight gradients of the trained matrices (attention over the mean",
        "causal context, Mamba2/KDA scans included). 6N: the 6 x active-parameters rule, for comparison.",
    ]
    if any(isinstance(r, Row) and r.hours_given for r in rows):
        lines.append(f"* hours given (--hours): the tokens are what they buy at MFU {c.mfu:g}.")
    if tokens_per_s:
        lines.append(f"{mfu_col}: the MFU that {tokens_per_s:,.0f} tokens/s on the {c.gpus} GPUs implies.")
        if impossible:
            lines.append(
                "! above 1: faster than the GPUs' peak; the throughput cannot be reached on this model."
            )
    return lines


def load_all(names: list[str], overrides: list[str]) -> list[tuple[str, Config]]:
    from adamba.config import load_config

    return [(Path(n).stem, load_config(n, overrides)) for n in names]
