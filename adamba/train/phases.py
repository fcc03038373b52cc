"""A run is a sequence of phases: the [[phase]] tables of a config resolved against its [train] and
[data] defaults, the parameters each one trains, and the plan printed by `adamba phases`.

Parameter selectors (a phase's `train` and `freeze`): an fnmatch glob over parameter names,
which also matches everything below a module name (`blocks.*.mixer` is every mixer parameter),
or `@M`, `@A`, `@K` (or a mix, `@MK`): every parameter of the layers whose mixer is of that kind,
their norms and feed-forwards included. "Train only the Mamba layers" is `train = ["@M"]`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch
from torch import nn

from adamba.config import Config, PhaseConfig
from adamba.errors import AdambaError

CALIBRATION_LR = 3e-3  # the implicit gate-calibration phase: calibrate_gate's recipe (Adam, beta2
# 0.999, cosine from 3e-3 to 0 with no warm-up, no decay, no clipping), which the gate figures in
# benchmarks/README.md were measured with
GATES = ["elastic.gates", "elastic.width_gates"]  # what gate calibration trains


@dataclass
class Phase:
    """A resolved phase: every value concrete."""

    index: int
    name: str
    objective: str
    steps: int  # its length now (a time budget may have shortened the first phase)
    steps_config: int  # the length the config asks for (steps, or tokens rounded up to steps)
    data: list[str]
    train: list[str] | None  # None: the objective's own selection
    freeze: list[str]
    lr: float
    schedule: str
    warmup_frac: float
    decay_frac: float
    min_lr_frac: float
    weight_decay: float
    beta2: float
    grad_clip: float  # 0 = none
    batch_size: int
    grad_accum: int
    seq_len: int
    reset_optimizer: bool = False
    seed: int = 0  # its data order (the first phase uses train.seed, as a run without phases did)
    world: int = 1  # processes, each reading batch_size sequences per micro-step

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len * self.grad_accum * self.world


def resolve(cfg: Config, pc: PhaseConfig, index: int, world: int = 1) -> Phase:
    """A phase with every value concrete; `world` processes each take batch_size sequences per
    micro-step, so a step is batch x seq x grad_accum x world tokens."""
    t = cfg.train

    def pick(value, default):
        return default if value is None else value

    batch, accum = pick(pc.batch_size, t.batch_size), pick(pc.grad_accum, t.grad_accum)
    seq = pick(pc.seq_len, cfg.data.seq_len)
    steps = pc.steps or math.ceil(pc.tokens / (batch * seq * accum * world))
    return Phase(
        index=index,
        name=pc.name or f"phase{index}",
        objective=pc.objective,
        steps=steps,
        steps_config=steps,
        data=list(pc.data) or list(cfg.data.train),
        train=None if pc.train is None else list(pc.train),
        freeze=list(pc.freeze),
        lr=pick(pc.lr, t.lr),
        schedule=pick(pc.schedule, t.schedule),
        warmup_frac=pick(pc.warmup_frac, t.warmup_frac),
        decay_frac=t.decay_frac,
        min_lr_frac=pick(pc.min_lr_frac, t.min_lr_frac),
        weight_decay=pick(pc.weight_decay, t.weight_decay),
        beta2=pick(pc.beta2, t.beta2),
        grad_clip=pick(pc.grad_clip, t.grad_clip),
        batch_size=batch,
        grad_accum=accum,
        seq_len=seq,
        reset_optimizer=pc.reset_optimizer,
        seed=t.seed + index,
        world=world,
    )


def plan(cfg: Config, world: int = 1) -> list[Phase]:
    """The phases of a run. Without [[phase]] tables: one phase of train.max_steps (`lm`, or
    `elastic` with elastic.enabled, then a `gate-calibration` phase of elastic.calibrate_steps
    that fits the gates with the LM frozen), so every config written before phases runs as it
    did."""
    if cfg.phase:
        return [resolve(cfg, pc, i, world) for i, pc in enumerate(cfg.phase)]
    e = cfg.elastic
    first = PhaseConfig(name="elastic" if e.enabled else "lm", objective="elastic" if e.enabled else "lm")
    first.steps = cfg.train.max_steps
    phases = [resolve(cfg, first, 0, world)]
    if e.enabled and e.calibrate_steps > 0:
        cal = PhaseConfig(
            name="gate-calibration",
            objective="gate-calibration",
            steps=e.calibrate_steps,
            lr=CALIBRATION_LR,
            schedule="cosine",
            warmup_frac=0.0,
            min_lr_frac=0.0,
            weight_decay=0.0,
            beta2=0.999,
            grad_clip=0.0,
            grad_accum=1,
        )
        phases.append(resolve(cfg, cal, 1, world))
    return phases


def select(model: nn.Module, patterns: list[str], where: str) -> set[str]:
    """Parameter names matched by selectors; a selector that matches nothing is an error (a typo
    would otherwise train or freeze nothing, silently)."""
    names = [n for n, _ in model.named_parameters()]
    kinds = {str(i): b.kind for i, b in enumerate(model.blocks)}
    out: set[str] = set()
    for pat in patterns:
        if pat.startswith("@"):
            hit = {n for n in names if n.startswith("blocks.") and kinds[n.split(".")[1]] in pat[1:]}
        else:
            hit = {n for n in names if fnmatchcase(n, pat) or fnmatchcase(n, pat + ".*")}
        if not hit:
            raise AdambaError(
                f"{where}: selector {pat!r} matches no parameter (names look like "
                f"{', '.join(names[:2])} ...; `adamba phases --config ...` lists what each phase trains)"
            )
        out |= hit
    return out


def trainable(model: nn.Module, phase: Phase, default: list[str], never: list[str] = ()) -> set[str]:
    """The names of the parameters a phase trains: its `train` selection (or the objective's
    `default`) less its `freeze` selection and what the objective gives no gradient (`never`)."""
    where = f"phase {phase.name!r}"
    names = select(model, default if phase.train is None else phase.train, where)
    names -= select(model, phase.freeze, where)
    names -= {n for n, _ in model.named_parameters() if any(fnmatchcase(n, g + ".*") for g in never)}
    if not names:
        raise AdambaError(f"{where} freezes every parameter it would train: nothing left to train")
    return names


def describe(cfg: Config) -> list[str]:
    """`adamba phases`: per phase its objective, length, data and what trains, counted on the
    model (built without memory, on the meta device)."""
    from adamba.model.elastic import attach_elastic
    from adamba.model.lm import LM
    from adamba.train.objectives import OBJECTIVES

    with torch.device("meta"):
        model = LM(cfg.model)
        if cfg.elastic.enabled:
            attach_elastic(model, cfg.elastic)
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    total = sum(sizes.values())
    phases = plan(cfg)
    lines = [
        f"{len(phases)} phase(s), model {total:,} parameters (pattern {''.join(cfg.model.layer_types())})",
        f"  {'#':>2} {'phase':<18} {'objective':<17} {'steps':>8} {'tokens':>13} {'trainable':>12} "
        f"{'frozen':>12} {'lr':>8} {'schedule':<8} data",
    ]
    for ph in phases:
        kind = OBJECTIVES[ph.objective]
        names = trainable(model, ph, kind.default_train, kind.never_train)
        n = sum(sizes[k] for k in names)
        data = ", ".join(ph.data) if ph.data else "(data.train is empty)"
        lines.append(
            f"  {ph.index:>2} {ph.name:<18} {ph.objective:<17} {ph.steps:>8,} {ph.steps * ph.tokens_per_step:>13,} "
            f"{n:>12,} {total - n:>12,} {ph.lr:>8.2g} {ph.schedule:<8} {data}"
        )
    return lines
