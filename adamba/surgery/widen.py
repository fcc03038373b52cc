"""widen: grow d_model (and with it attention heads, MLP hidden units, Mamba2 heads and expert
widths) of a trained model without changing what it computes.

The target d_model D picks the method for the residual stream (old width d):

* **duplicate** (D = f x d, f an integer; HyperCloning, Samragh et al. 2024): the stream becomes
  f copies of itself, block-tiled: new dim j holds old dim j mod d, so the first d dims are the
  old stream. The embedding's columns and the rows of every projection that writes the stream
  (o_proj, w_down, Mamba out_proj, expert down_proj and its bias) are tiled; every weight that
  reads the stream (qkv_proj, w_up/w_gate, in_proj, router, gate_up_proj, the head) has its
  columns tiled and divided by f, so it computes what it did. RMSNorm gains are tiled (the RMS
  of a tiled vector is unchanged, eps included). Attention keeps head_dim and gets f x the heads
  (query and KV heads: copy c of query head i is head c*n_head + i and reads copy c of its own
  KV head, so GQA groups hold); o_proj's input columns are divided by f. Mamba2 heads (x
  channels, z, dt, dt_bias, A_log, D, conv channels, norm gains) are copied inside their B/C
  group (head order per group: the group's old heads, then their copies; with n_groups = 1 the
  old heads come first), B/C (d_state, n_groups) stay, out_proj's columns are divided by f; each
  norm group is a tiled vector, so its RMS is unchanged. Tied embeddings: the embedding (= head)
  is tiled undivided and the final norm's gain takes the 1/f instead.
* **zero-grow** (any other D > d): new stream dims start at zero and stay zero in the forward
  pass: the embedding's new columns and every stream writer's new rows are 0; stream readers'
  new columns are random (they read zeros). RMSNorm over [x, 0] divides by the RMS over D dims,
  sqrt(sum x^2 / D + eps): the old gains are multiplied by sqrt(d/D) and model.norm_eps by d/D,
  which makes it sqrt(d/D) x sqrt(sum x^2 / d + eps), the old RMS exactly, eps included (new
  gains start at the mean of the rescaled old ones). Every norm then keeps its values: with
  QK-norm, q and k rows are multiplied by sqrt(d/D) too (a norm over head_dim whose eps shrank).
  Heads grow with the stream (n_head x D/d, which must be whole; GQA keeps its group size, or one
  shared KV head under MQA); new heads come after the old ones with fresh random q/k/v rows and
  zero o_proj columns. Attention biases follow their rows (o_proj's on new stream dims 0), sinks
  their heads (a copy keeps its head's sink, a new head starts at 0); sliding windows and
  RoPE/YaRN do not depend on the width. Mamba2 gets expand x D channels: new heads in each B/C group after its old
  heads, fresh x/dt/conv/time parameters, and z rows 0 so their gate silu(0) = 0 adds nothing to
  the group's sum of squares; the group grows by D/d like the stream, so the same eps and gain
  rescaling keeps the gated norm exact. Their out_proj columns are random, not zero (the gate
  already zeroes their output; with both zero they would get no gradient at all). The new config
  carries the smaller norm_eps (the record's `set` list names it with the other changes).

MLP hidden units and expert widths grow on their own (--mlp-hidden; default: hidden x D/d): a
multiple of the old hidden copies the units (w_down / down_proj inputs divided by the copies;
experts keep GPT-OSS's interleaved gate/up columns per unit), anything else appends units with
fresh incoming weights and zero outgoing ones. Old heads and units always stay the first slice,
in order (Matryoshka nesting).

`noise` > 0 breaks the symmetry of copies without changing the function: every weight that
reads a duplicated dimension (a copied stream dim, head, Mamba channel, MLP or expert unit) gets,
on the columns of copy c, eps_c ~ N(0, (noise x std(old weight) / copies)^2) centred over the
copies (sum_c eps_c = 0 element by element): the copies see equal inputs, so the sum they feed is
unchanged in exact arithmetic while their gradients differ. A weight is perturbed only along
the dimension it reads (the embedding and a tied head never), so every copy still computes
exactly what it did.

Elastic heads (a model after Matryoshka training, as the plan widens it) widen with the stream:
the gates and the predictor read rms_norm(h) without a gain, so the first Linear of each gets
its columns tiled / f (duplicate) or its old columns x sqrt(d/D) and zeros for the new dims
(zero-grow): every gate and predictor logit is kept (checked with the logits).

Every widening checks the logits against the old model's on a random batch and refuses (writes
nothing) beyond 1e-4.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from adamba.config import ModelConfig
from adamba.errors import AdambaError
from adamba.model.lm import LM

TOLERANCE = 1e-4  # max |logit change| the surgery accepts


@dataclass
class Axis:
    """How one dimension grows: new index j holds old index src[j] (-1: new, no old counterpart);
    copies[j] new indices hold that same old index (1 for new ones)."""

    src: torch.Tensor  # long [n_new]
    copies: torch.Tensor  # float [n_new]
    n_old: int

    @property
    def fresh(self) -> torch.Tensor:
        return self.src < 0

    @property
    def n(self) -> int:
        return len(self.src)

    @staticmethod
    def duplicate(n: int, k: int) -> Axis:
        """k block-tiled copies: [0..n) [0..n) ..."""
        return Axis(torch.arange(n * k) % n, torch.full((n * k,), float(k)), n)

    @staticmethod
    def grow(n: int, n_new: int) -> Axis:
        """The old indices, then n_new - n new ones."""
        src = torch.arange(n_new)
        src[n:] = -1
        return Axis(src, torch.ones(n_new), n)

    @staticmethod
    def units(n: int, n_new: int) -> Axis:
        """Copies when n_new is a multiple of n, else appended new units."""
        return Axis.duplicate(n, n_new // n) if n_new % n == 0 else Axis.grow(n, n_new)

    def blocks(self, size: int) -> Axis:
        """Per unit -> per channel, `size` consecutive channels a unit (head-major layouts, and
        GPT-OSS's interleaved gate/up pair of a unit)."""
        ch = self.src[:, None] * size + torch.arange(size)
        src = torch.where(self.src[:, None] >= 0, ch, -1).flatten()
        return Axis(src, self.copies.repeat_interleave(size), self.n_old * size)

    @staticmethod
    def cat(*axes: Axis) -> Axis:
        """Concatenated segments (fused projections): each segment's old indices offset by the
        old sizes before it."""
        srcs, off = [], 0
        for a in axes:
            srcs.append(torch.where(a.src >= 0, a.src + off, -1))
            off += a.n_old
        return Axis(torch.cat(srcs), torch.cat([a.copies for a in axes]), off)

    def method(self) -> str:
        if bool(self.fresh.any()):
            return "zero-grow"
        return "duplicate" if bool((self.copies > 1).any()) else "same"


@dataclass
class Use:
    """One dimension of a weight: `axis` grows it; reads = the weight consumes this dimension
    (columns of a Linear: divided by the copies, noised); zero_new: its new indices are 0 (bool,
    or a mask over the new dimension), else they keep the fresh model's random init; scale
    multiplies the old entries (a number, or one per new index)."""

    axis: Axis
    reads: bool = False
    zero_new: bool | torch.Tensor = False
    scale: float | torch.Tensor = 1.0


def _along(v: torch.Tensor, dim: int, ndim: int) -> torch.Tensor:
    shape = [1] * ndim
    shape[dim] = -1
    return v.view(shape)


def remap(
    old: torch.Tensor, fresh: torch.Tensor, uses: dict[int, Use], noise: float = 0.0, gen=None
) -> torch.Tensor:
    """The widened weight: old entries gathered along every grown dim (and scaled), entries new
    on some dim from `fresh` (the new model's init) or zero, centred noise on read dims."""
    g, nd = old, old.ndim
    keep = torch.ones(fresh.shape, dtype=torch.bool)
    for dim, u in uses.items():
        g = g.index_select(dim, u.axis.src.clamp(min=0))
        factor = torch.ones(u.axis.n, dtype=torch.float64) * u.scale
        if u.reads:
            factor = factor / u.axis.copies.double()
        g = g * _along(factor, dim, nd).to(g.dtype)
        keep = keep & _along(~u.axis.fresh, dim, nd)
    if g.shape != fresh.shape:
        raise AssertionError(f"widen: {tuple(g.shape)} vs {tuple(fresh.shape)}")
    out = torch.where(keep, g, fresh.to(g.dtype))
    for dim, u in uses.items():
        zero = u.axis.fresh & (u.zero_new if isinstance(u.zero_new, torch.Tensor) else bool(u.zero_new))
        out = out.masked_fill(_along(zero, dim, nd), 0.0)
    for dim, u in uses.items():
        if u.reads and noise > 0 and bool((u.axis.copies > 1).any()):
            out = out + centred_noise(old, out.shape, dim, u.axis, noise, gen).to(out.dtype)
    return out


def centred_noise(old: torch.Tensor, shape, dim: int, axis: Axis, noise: float, gen) -> torch.Tensor:
    """N(0, (noise x std(old) / copies)^2) per entry, minus its mean over the copies of the same
    old index (so the copies' noise sums to 0); 0 on new indices and on single copies."""
    nd = len(shape)
    e = torch.randn(shape, generator=gen, dtype=torch.float64) * noise * float(old.double().std())
    e = e / _along(axis.copies.double(), dim, nd)
    e = e.masked_fill(_along(axis.fresh, dim, nd), 0.0)
    src = axis.src.clamp(min=0)
    sums_shape = list(shape)
    sums_shape[dim] = axis.n_old
    sums = torch.zeros(sums_shape, dtype=torch.float64).index_add_(dim, src, e)
    count = torch.bincount(axis.src[axis.src >= 0], minlength=axis.n_old).clamp(min=1).double()
    e = e - (sums / _along(count, dim, nd)).index_select(dim, src)
    return e.masked_fill(_along(axis.fresh, dim, nd), 0.0)


def gain(old: torch.Tensor, axis: Axis, scale: float) -> torch.Tensor:
    """An RMSNorm gain: old entries gathered (copies keep the gain) and scaled; new entries the
    mean of the scaled old ones."""
    g = old.index_select(0, axis.src.clamp(min=0)) * scale
    return torch.where(axis.fresh, old.mean() * scale, g)


@dataclass
class Plan:
    """The arithmetic of a widening: new sizes and how every dimension maps."""

    d: int
    D: int
    f: int  # copies of the stream (1 under zero-grow)
    eps_scale: float  # norm_eps x this (d/D under zero-grow, else 1); gains x its square root
    stream: Axis
    n_head: tuple[int, int] = (0, 0)
    n_kv_head: tuple[int, int] = (0, 0)
    heads: Axis | None = None
    kv: Axis | None = None
    hidden: tuple[int, int] = (0, 0)
    units: Axis | None = None
    expert_hidden: tuple[int, int] = (0, 0)
    experts: Axis | None = None
    mamba_heads: tuple[int, int] = (0, 0)
    mheads: Axis | None = None

    @property
    def method(self) -> str:
        return "duplicate" if self.f > 1 else "zero-grow" if self.D > self.d else "same"


def _sizes(cfg: ModelConfig, D: int) -> tuple[int, int, int]:
    """(query heads, KV heads, Mamba heads) at d_model D; raises ValueError(reason)."""
    d, kinds = cfg.d_model, set(cfg.layer_types())
    nh, nkv, nm = cfg.attn.n_head, cfg.attn.n_kv_head, 0
    if "A" in kinds:
        a = cfg.attn
        if D % d == 0:
            nh, nkv = a.n_head * D // d, a.n_kv_head * D // d
        else:
            if a.n_head * D % d:
                raise ValueError(f"{a.n_head} attention heads x {D}/{d} is not a whole number of heads")
            nh = a.n_head * D // d
            group = a.n_head // a.n_kv_head
            if (nh - a.n_head) % group == 0:
                nkv = nh // group
            elif a.n_kv_head == 1:
                nkv = 1
            else:
                raise ValueError(
                    f"{nh - a.n_head} new attention heads do not fill GQA groups of {group} query heads"
                )
    if "M" in kinds:
        mc = cfg.mamba
        inner = mc.expand * D
        if inner % mc.head_dim:
            raise ValueError(f"Mamba2 inner width {inner} is not a multiple of mamba.head_dim={mc.head_dim}")
        nm = inner // mc.head_dim
        if nm % mc.n_groups:
            raise ValueError(f"{nm} Mamba2 heads do not split into mamba.n_groups={mc.n_groups}")
    return nh, nkv, nm


def valid_d_models(cfg: ModelConfig, n: int = 6) -> list[int]:
    """The first n widths above d_model that widen can reach."""
    out = []
    for D in range(cfg.d_model + 1, 64 * cfg.d_model + 1):
        try:
            _sizes(cfg, D)
        except ValueError:
            continue
        out.append(D)
        if len(out) == n:
            break
    return out


def mlp_hidden_of(cfg: ModelConfig) -> int:
    return int(round(cfg.mlp.ratio * cfg.d_model))


def expert_hidden_of(cfg: ModelConfig) -> int:
    return round(cfg.moe.ratio * cfg.d_model) if cfg.moe.ratio > 0 else mlp_hidden_of(cfg)


def plan_widen(cfg: ModelConfig, d_model: int, mlp_hidden: int | None = None) -> Plan:
    """Check a widening of `cfg` and work out its sizes and maps (no tensors touched)."""
    d = cfg.d_model
    if not isinstance(d_model, int) or isinstance(d_model, bool) or d_model < d:
        raise AdambaError(f"--d-model {d_model!r}: give a whole number >= the model's d_model {d}")
    if "K" in cfg.layer_types():
        raise AdambaError(
            f"widen: KDA (K) layers are not supported yet (pattern {cfg.pattern!r}); widen before adding them"
        )
    try:
        nh, nkv, nm = _sizes(cfg, d_model)
    except ValueError as e:
        valid = valid_d_models(cfg)
        some = f"{', '.join(map(str, valid))}, ..." if valid else f"none up to {64 * d}"
        raise AdambaError(f"--d-model {d_model}: {e}; valid values above {d}: {some}") from None
    H = mlp_hidden_of(cfg)
    H2 = round(H * d_model / d) if mlp_hidden is None else mlp_hidden
    if not isinstance(H2, int) or isinstance(H2, bool) or H2 < H:
        raise AdambaError(f"--mlp-hidden {H2!r}: give a whole number >= the MLP's hidden width {H}")
    if d_model == d and H2 == H:
        raise AdambaError(
            f"--d-model {d_model} is the model's d_model and the MLP keeps {H} units: nothing to widen"
        )
    f = d_model // d if d_model % d == 0 else 1
    zero = d_model % d != 0
    p = Plan(
        d=d,
        D=d_model,
        f=f,
        eps_scale=d / d_model if zero else 1.0,
        stream=Axis.grow(d, d_model) if zero else Axis.duplicate(d, f),
    )
    kinds = set(cfg.layer_types())
    if "A" in kinds:
        a = cfg.attn
        p.n_head, p.n_kv_head = (a.n_head, nh), (a.n_kv_head, nkv)
        p.heads = Axis.grow(a.n_head, nh) if zero else Axis.duplicate(a.n_head, f)
        p.kv = Axis.grow(a.n_kv_head, nkv) if zero else Axis.duplicate(a.n_kv_head, f)
    p.hidden, p.units = (H, H2), Axis.units(H, H2)
    if "moe" in cfg.layer_ffns():
        He = expert_hidden_of(cfg)
        He2 = H2 if cfg.moe.ratio == 0 else round(He * d_model / d)
        p.expert_hidden, p.experts = (He, He2), Axis.units(He, He2)
    if "M" in kinds:
        mc = cfg.mamba
        old = mc.expand * d // mc.head_dim
        p.mamba_heads, p.mheads = (old, nm), mamba_head_axis(old, nm, mc.n_groups)
    return p


def mamba_head_axis(n: int, n_new: int, groups: int) -> Axis:
    """Mamba2 heads grow inside their B/C group (head i reads group i // heads-per-group): each
    group keeps its old heads first, then their copies (n_new a multiple of n) or new heads."""
    per, per_new = n // groups, n_new // groups
    j = torch.arange(n_new)
    g, r = j // per_new, j % per_new
    if n_new % n == 0:
        return Axis(g * per + r % per, torch.full((n_new,), float(n_new // n)), n)
    return Axis(torch.where(r < per, g * per + r, -1), torch.ones(n_new), n)


def widened_config(cfg: ModelConfig, p: Plan) -> ModelConfig:
    """The model config at the new widths: head_dim explicit, MLP/expert ratios that give back
    the new hidden widths exactly."""
    cfg = copy.deepcopy(cfg)
    D = p.D
    attn = dataclasses.replace(cfg.attn, head_dim=cfg.attn.head_dim)
    kda = cfg.kda
    if p.heads is not None:
        attn = dataclasses.replace(attn, n_head=p.n_head[1], n_kv_head=p.n_kv_head[1])
        if kda.n_head == cfg.attn.n_head:  # follows attn.n_head (0 resolved by validate): keep following
            kda = dataclasses.replace(kda, n_head=attn.n_head)
    mlp = dataclasses.replace(cfg.mlp, ratio=p.hidden[1] / D)
    moe = cfg.moe
    if p.experts is not None and cfg.moe.ratio > 0:
        moe = dataclasses.replace(moe, ratio=p.expert_hidden[1] / D)
    eps = float(f"{cfg.norm_eps * p.eps_scale:.12g}")  # 1e-5 x 2048/2560 -> 8e-06, as a config would say it
    new = dataclasses.replace(cfg, d_model=D, norm_eps=eps, attn=attn, mlp=mlp, moe=moe, kda=kda)
    new = new.validate()
    if mlp_hidden_of(new) != p.hidden[1] or (
        p.experts is not None and expert_hidden_of(new) != p.expert_hidden[1]
    ):
        raise AdambaError(
            f"widen: no model.mlp.ratio / model.moe.ratio gives {p.hidden[1]} / {p.expert_hidden[1]} hidden "
            f"units at d_model {D}; choose another --mlp-hidden"
        )
    return new


def config_changes(old: ModelConfig, new: ModelConfig) -> list[str]:
    """`model.KEY=VALUE` for every model setting that differs: what a training run started from
    the widened checkpoint must --set (train.init_from compares the whole [model] table)."""

    def flat(dct: dict, prefix: str) -> dict:
        out = {}
        for k, v in dct.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    a, b = flat(dataclasses.asdict(old), "model."), flat(dataclasses.asdict(new), "model.")
    return [f"{k}={b[k]!r}" for k in b if a.get(k) != b[k]]


def _param_uses(name: str, model: LM, p: Plan) -> dict[int, Use]:
    """How each dimension of parameter `name` grows (see the module docstring)."""
    S = p.stream
    writes = Use(S, zero_new=True)  # rows writing the stream
    reads = Use(S, reads=True)  # columns reading the stream (new ones random: they read zeros)
    if name == "embed.weight" or (name == "head.weight" and model.cfg.tie_embeddings):
        return {1: writes}
    if name == "head.weight":
        return {1: reads}
    if name.startswith("elastic."):  # gates / predictor: only their first Linear reads the stream
        # they read rms_norm(h) (no gain, eps negligible): [h, 0] normalises to sqrt(D/d) x [h/rms, 0]
        readers = {id(w) for w in _elastic_readers(model.elastic)}
        first = id(dict(model.named_parameters())[name]) in readers
        return {1: Use(S, reads=True, zero_new=True, scale=math.sqrt(p.eps_scale))} if first else {}
    parts = name.split(".")
    if parts[0] != "blocks":
        raise AdambaError(f"widen: no rule for parameter {name}; nothing written")
    block = model.blocks[int(parts[1])]
    mod, rest = parts[2], ".".join(parts[3:])
    if mod == "mixer" and block.kind == "A":
        hd = block.mixer.head_dim
        q, kv = p.heads.blocks(hd), p.kv.blocks(hd)
        if rest in ("qkv_proj.weight", "qkv_proj.bias"):
            rows = Axis.cat(q, kv, kv)
            scale = torch.ones(rows.n, dtype=torch.float64)
            if block.mixer.qk_norm:  # q, k through a norm whose eps shrank by eps_scale
                scale[: q.n + kv.n] = math.sqrt(p.eps_scale)
            return (
                {0: Use(rows, scale=scale), 1: reads}
                if rest.endswith("weight")
                else {0: Use(rows, scale=scale)}
            )
        if rest == "o_proj.weight":
            return {0: writes, 1: Use(q, reads=True, zero_new=True)}
        if rest == "o_proj.bias":
            return {0: writes}
        if rest == "sinks":  # a logit per query head: copies keep it, new heads the fresh 0
            return {0: Use(p.heads)}
        if rest in ("q_norm_weight", "k_norm_weight"):
            return {}
    if mod == "mixer" and block.kind == "M":
        m = block.mixer
        ch, bc = p.mheads.blocks(m.head_dim), Axis.grow(2 * m.ngroups * m.d_state, 2 * m.ngroups * m.d_state)
        if rest == "in_proj.weight":
            rows = Axis.cat(ch, ch, bc, p.mheads)
            z = torch.zeros(rows.n, dtype=torch.bool)
            z[: ch.n] = True  # new channels' z rows 0: gate silu(0) = 0
            return {0: Use(rows, zero_new=z), 1: reads}
        if rest in ("conv1d.weight", "conv1d.bias"):
            return {0: Use(Axis.cat(ch, bc))}
        if rest in ("dt_bias", "A_log", "D"):
            return {0: Use(p.mheads)}
        if rest == "out_proj.weight":
            return {0: writes, 1: Use(ch, reads=True)}
    if mod == "mlp" and isinstance(block.mlp, torch.nn.Module):
        from adamba.nn.moe import MoE

        if isinstance(block.mlp, MoE):
            U = p.experts
            uses = {
                "router.weight": {1: reads},
                "router.bias": {},
                "gate_up_proj": {1: reads, 2: Use(U.blocks(2))},
                "gate_up_proj_bias": {1: Use(U.blocks(2))},
                "down_proj": {1: Use(U, reads=True, zero_new=True), 2: writes},
                "down_proj_bias": {1: writes},
            }
        else:
            U = p.units
            uses = {
                "w_up.weight": {0: Use(U), 1: reads},
                "w_gate.weight": {0: Use(U), 1: reads},
                "w_down.weight": {0: writes, 1: Use(U, reads=True, zero_new=True)},
            }
        if rest in uses:
            return uses[rest]
    raise AdambaError(f"widen: no rule for parameter {name}; nothing written")


def _gain(name: str, old: torch.Tensor, model: LM, p: Plan) -> torch.Tensor | None:
    """Norm gains (None: not a gain)."""
    if name == "norm.weight" or name.endswith((".norm1.weight", ".norm2.weight")):
        g = gain(old, p.stream, math.sqrt(p.eps_scale))
        if name == "norm.weight" and model.cfg.tie_embeddings:
            g = g / p.f  # the tied head is the tiled embedding, not divided by the copies
        return g
    if name.endswith(".mixer.norm.weight"):  # groups grow by D/d like the stream
        m = model.blocks[int(name.split(".")[1])].mixer
        return gain(old, p.mheads.blocks(m.head_dim), math.sqrt(p.eps_scale))
    return None


@torch.no_grad()
def widen(
    model: LM, d_model: int, mlp_hidden: int | None = None, noise: float = 0.0, seed: int = 0
) -> tuple[LM, dict]:
    """(the widened model, a record of the surgery). New parameters are drawn from a fresh
    LM(new config) under `seed` (the global RNG is left as it was); `noise` breaks the symmetry
    of copies (module docstring)."""
    if not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise AdambaError(f"--noise {noise!r}: give a finite number >= 0 (0: no noise)")
    p = plan_widen(model.cfg, d_model, mlp_hidden)
    cfg = widened_config(model.cfg, p)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        grown = LM(cfg)
        if hasattr(model, "elastic"):
            from adamba.model.elastic import attach_elastic

            attach_elastic(grown, model.elastic.ecfg)
    gen = torch.Generator().manual_seed(seed + 1)
    old = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    fresh = grown.state_dict()
    new = {}
    for name, f in fresh.items():
        if name not in old:
            raise AdambaError(
                f"widen: the widened model has a parameter {name} the old one lacks; nothing written"
            )
        o = old[name]
        g = _gain(name, o, model, p)
        if g is None:
            g = remap(o, f, _param_uses(name, model, p), noise, gen)
        new[name] = g.to(f.dtype)
    if set(old) != set(fresh):
        raise AdambaError(f"widen: parameters not carried over: {sorted(set(old) - set(fresh))[:4]}")
    grown.load_state_dict(new, strict=True)  # every key placed: nothing dropped by shape
    grown = grown.to(device)
    x = torch.randint(0, cfg.vocab_size, (2, min(64, cfg.max_seq_len)), device=device)
    diff = float((model.eval()(x)[0].float() - grown.eval()(x)[0].float()).abs().max())
    if hasattr(model, "elastic"):
        diff = max(diff, _elastic_diff(model, grown, x))
    if not diff <= TOLERANCE:
        raise AdambaError(
            f"widen changed the model's logits by {diff:.3g} (> {TOLERANCE:g}); nothing written"
        )
    record = {
        "surgery": "widen",
        "method": p.method,
        "d_model": [p.d, p.D],
        "norm_eps": [model.cfg.norm_eps, cfg.norm_eps],
        "mlp_hidden": list(p.hidden),
        "mlp_method": p.units.method(),
        "params_before": model.num_params(),
        "params_after": grown.num_params(),
        "noise": noise,
        "seed": seed,
        "max_abs_logit_diff": diff,
        "set": config_changes(model.cfg, cfg),
    }
    if p.heads is not None:
        record.update(n_head=list(p.n_head), n_kv_head=list(p.n_kv_head), head_dim=cfg.attn.head_dim)
    if p.experts is not None:
        record.update(expert_hidden=list(p.expert_hidden), expert_method=p.experts.method())
    if p.mheads is not None:
        record.update(mamba_heads=list(p.mamba_heads))
    return grown, record


def _elastic_readers(heads) -> list[torch.Tensor]:
    """The weights of the elastic heads that read the residual stream: each gate's first Linear
    (a gate is Linear(d, 1) or Linear(d, g) -> ReLU -> Linear(g, 1)) and the predictor's."""
    gates = [*heads.gates, *(g for s in heads.width_gates for g in s)]
    return [(g[0] if isinstance(g, torch.nn.Sequential) else g).weight for g in gates] + [
        heads.predictor[0].weight
    ]


@torch.no_grad()
def _elastic_diff(model: LM, grown: LM, x: torch.Tensor) -> float:
    """Largest change of a gate or predictor logit (every layer, every gate set) on `x`."""
    from adamba.model.elastic import run_layers

    n = model.cfg.n_layer
    (_, hs), (_, hg) = run_layers(model, x, [1.0] * n, keep=True), run_layers(grown, x, [1.0] * n, keep=True)
    e, eg = model.elastic, grown.elastic
    out = [e.predictor_logits(hs[0].mean(1)) - eg.predictor_logits(hg[0].mean(1))]
    for w in [1.0, *e.narrow]:
        out += [e.gate_logit(i, hs[i], w) - eg.gate_logit(i, hg[i], w) for i in range(n - 1)]
    return max(float(t.abs().max()) for t in out)


def widen_checkpoint(
    ckpt_path: str,
    out: str,
    d_model: int,
    mlp_hidden: int | None = None,
    noise: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Read a checkpoint (run directory or checkpoint folder), widen it, and write the wider model
    as checkpoint step 0 of the run directory `out` (with the tokenizer and surgery.json), ready
    for `adamba train --set train.init_from=OUT ...` (the record's `set` list) or sample / eval.
    Nothing is written (and a non-empty --out is left alone) when the surgery fails."""
    from adamba.checkpoint import fresh_out_dir, load_model, save_checkpoint

    if Path(out).exists() and any(Path(out).iterdir()) and not overwrite:  # before the work
        raise AdambaError(f"{out} is not empty; choose another --out or pass --overwrite")
    model, _, ckpt = load_model(ckpt_path)
    grown, record = widen(model, d_model, mlp_hidden, noise)
    record["from"] = str(ckpt.path)
    dst = fresh_out_dir(out, overwrite)  # only now: a refused surgery leaves an old --out as it was
    cfg = dataclasses.replace(ckpt.cfg, model=grown.cfg)
    path = save_checkpoint(dst, 0, grown, cfg, ckpt.tokenizer_path, state={"surgery": record})
    (dst / "surgery.json").write_text(json.dumps(record, indent=2))
    return path
