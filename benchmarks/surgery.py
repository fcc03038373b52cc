"""Model surgery, measured (issue 26): does growing a trained model save training, and what do
inject-mamba and MoE buy at equal tokens?

1. **Widened vs scratch** (every seed): a small dense model (d_model 64) trains `--small-steps`;
   `adamba.surgery.widen.widen_checkpoint` grows it to d_model 128 (function-preserving; d -> 2d
   is HyperCloning's duplication, so heads, KV heads and MLP units double), and the widened model
   trains on (`train.init_from`, fresh AdamW) for `--steps`; a model of the widened shape (the
   record's `set` list on top of the small model's settings, so exactly the same architecture)
   trains from scratch for `--steps` on the same data. Reported: the tokens the widened model
   needs to reach the scratch model's final validation bits/byte (linear interpolation between
   evaluations; step 0 of the widened run is the small model's final bits/byte, since widening
   keeps the function), with and without the small model's pre-widening tokens, the ratio
   scratch tokens / widened tokens, the same ratio in training FLOPs (the small model's tokens
   cost ~1/3 as much), and the widened model's bits/byte at equal total tokens. Exact copies stay
   exact copies under gradient descent (equal inputs, equal gradients, AdamW is elementwise),
   so a widened model without noise keeps the capacity of the small one: `--noise` (default 1,
   every seed) perturbs the copies' reading weights by noise x std(weight) / copies, centred so
   the copies' perturbations sum to zero (the function is kept exactly at any size) and the
   symmetry breaks; `--ablation-noise` (default 0) runs on the first seed only.
   `copy_asymmetry` (relative difference of the two halves of the trained embedding) shows
   whether the copies came apart.
2. **Inject-mamba vs dense, equal extra tokens**: from the first seed's trained scratch model
   (d128), `inject_checkpoint` inserts Mamba2 layers after blocks 1 and 3 (`AAMAAM`, output
   projections zero: same function) and trains `--extra-steps` (a) only the new layers
   (`[[phase]] train = ["@M"]`) and (b) every weight; (c) the dense model trains the same extra
   steps (also through `train.init_from`, the same fresh optimizer, data order and schedule).
3. **MoE vs dense at equal active parameters**: d128, 4 layers, dense SwiGLU MLP (hidden 512)
   vs `model.ffn=moe` (GPT-OSS-style SwiGLU experts with biases and a router) with 4 experts of
   hidden 512, top-1, and 8 experts of hidden 256, top-2 (both: 512 active hidden units a token,
   as the dense MLP), same seed, data and `--moe-steps`: training tokens/s (median step time
   between evaluations, so evaluation is left out) and final validation bits/byte at equal
   tokens; total vs active parameters. GPT-OSS routing takes the softmax over the chosen k
   logits, so under top-1 the weight is always 1 and the router gets no gradient from the LM
   loss (only from the load-balancing loss): top-2 is the variant whose router learns.

Data: Tiny Shakespeare + WikiText-2 valid from ../shared/data (last 10% of each held out), a
byte-level BPE of `--vocab` tokens trained by adamba, shards written by adamba into a temp
folder; every run is `adamba.train.trainer.run` with the `tiny-cpu` preset's recipe (AdamW,
lr 3e-3, embedding lr x10) but a constant learning rate after a 5% warm-up, so that every point
of a curve is comparable with every point of another (a decay at the end would make "tokens to
reach the final value" a statement about the schedule). Validation bits/byte: the trainer's
evaluation every `--eval-every` steps on the same `--eval-batches` x batch held-out sequences.

Caveats: tiny models (0.3M -> 1M parameters with a 1024-token vocabulary, which is a large share
of them) and a few hundred steps of 16 x 128 tokens on a shared 2-core CPU; the corpus (~0.8M
tokens) is seen ~1.3 times by a 500-step run, ~1.9 times by the small + widened pair. HyperCloning's
2.2-4x was measured on far larger models and token budgets (Samragh et al. 2024). Learning rate,
noise and step counts were not tuned per arm beyond the noise pilot in benchmarks/README.md.
Timings share the machine with other jobs (read tokens/s as a ratio of runs minutes apart).

    python benchmarks/surgery.py            # the full measurement (~15-25 min on 2 cores)
    python benchmarks/surgery.py --quick    # a tiny smoke version (~30 s), JSON in the temp folder
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP stalls on shared cores

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from adamba.checkpoint import load_model  # noqa: E402
from adamba.config import PhaseConfig, load_config  # noqa: E402
from adamba.model import flops  # noqa: E402
from adamba.train.monitor import read_metrics  # noqa: E402
from adamba.train.trainer import run  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TEXTS = [
    ROOT.parent / "shared/data/tinyshakespeare/input.txt",
    ROOT.parent / "shared/data/wikitext2/valid.txt",
]
MAMBA = [  # settings the injected Mamba2 layers take (inert in the dense models)
    "model.mamba.ffn=none",
    "model.mamba.d_state=16",
    "model.mamba.head_dim=16",
    "model.mamba.chunk_size=32",
]


# ---- data ----------------------------------------------------------------------------------------
def prepare(texts: list[Path], out: Path, vocab: int, max_chars: int = 0) -> dict:
    """Hold out the last 10% of each text (cut at a line), train a byte-level BPE on the rest,
    write train / val shards under out/."""
    from adamba.data.shards import load_tokens, read_manifest, write_shards
    from adamba.data.tokenizer import Tokenizer

    docs, vdocs, chars = [], [], [0, 0]
    for path in texts:
        raw = path.read_text()
        raw = raw[:max_chars] if max_chars else raw
        cut = raw.rfind("\n", 0, int(len(raw) * 0.9)) + 1
        train, val = raw[:cut], raw[cut:]
        docs += [train[i : i + 4000] for i in range(0, len(train), 4000)]  # ~4 KB documents
        vdocs += [val[i : i + 4000] for i in range(0, len(val), 4000)]
        chars[0] += len(train)
        chars[1] += len(val)
    tok = Tokenizer.train(docs, vocab)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    train_m = write_shards(docs, tok, out / "train", source="train")
    val_m = write_shards(vdocs, tok, out / "val", source="val")
    n = [sum(len(load_tokens(s)) for s in read_manifest(m)) for m in (train_m, val_m)]
    return {
        "texts": [str(p) for p in texts],
        "vocab": tok.vocab_size,
        "train_chars": chars[0],
        "val_chars": chars[1],
        "train_tokens": n[0],
        "val_tokens": n[1],
        "overrides": [
            f"data.train={train_m}",
            f"data.val={val_m}",
            f"data.tokenizer={out / 'tokenizer.json'}",
        ],
    }


# ---- one training run ----------------------------------------------------------------------------
def shape(d_model: int, n_head: int, n_kv_head: int) -> list[str]:
    return [f"model.d_model={d_model}", f"model.attn.n_head={n_head}", f"model.attn.n_kv_head={n_kv_head}"]


def train(
    out: Path, over: list[str], steps: int, seed: int, init_from: Path | None = None, train_only=None
) -> dict:
    """One `trainer.run` into `out`; its validation curve, step times and parameters."""
    shape_over = list(over)
    over = over + [f"train.max_steps={steps}", f"train.seed={seed}", f"run.out_dir={out}"]
    if init_from is not None:
        over.append(f"train.init_from={init_from}")
    cfg = load_config("tiny-cpu", over)
    if train_only is not None:  # one phase training only the selected parameters
        cfg.phase = [PhaseConfig(name="new-layers", steps=steps, train=list(train_only))]
        cfg.validate()
    t = time.perf_counter()
    res = run(cfg, overwrite=True)
    wall = time.perf_counter() - t
    rows = read_metrics(out / "metrics.jsonl")
    curve = [(r["tokens"], r["val_bpb"]) for r in rows if "val_bpb" in r]
    # step times between evaluations (an evaluation lands in the next row's elapsed time), after
    # the first few steps, which pay one-off costs
    dts = [
        b["elapsed_s"] - a["elapsed_s"]
        for a, b in zip(rows[4:], rows[5:])
        if "val_bpb" not in a and "val_bpb" not in b
    ]
    tokens_per_step = rows[0]["tokens"]
    model, _, _ = load_model(res.run_dir)
    names = {n for n, p in model.named_parameters()}
    trained = names if train_only is None else trained_names(model, train_only)
    seq = cfg.data.seq_len
    r = {
        "dir": str(out),
        "model_overrides": [o for o in shape_over if o.startswith("model.")],
        "_over": shape_over,  # to continue it (train.init_from compares the model table)
        "seed": seed,
        "steps": res.steps,
        "tokens": res.tokens_seen,
        "params": model.num_params(),
        "trained_params": sum(p.numel() for n, p in model.named_parameters() if n in trained),
        "train_flops_per_token": flops.train_flops(model, seq, trainable=trained).total,
        "final_bpb": curve[-1][1],
        "curve": curve,
        "tok_s": tokens_per_step / statistics.median(dts) if dts else res.tokens_per_s,
        "tok_s_overall": res.tokens_per_s,
        "wall_s": wall,
        "pattern": "".join(model.cfg.layer_types()),
    }
    print(
        f"  {out.name:<22} {r['steps']:>5} steps {r['tokens']:>10,} tokens  val bpb {r['final_bpb']:.4f}  "
        f"{r['params']:>9,} params  {r['tok_s']:>7,.0f} tok/s  {wall:5.0f} s",
        flush=True,
    )
    return r


def trained_names(model, selectors: list[str]) -> set[str]:
    from adamba.train.phases import select

    return select(model, selectors, "train")


# ---- curve arithmetic ----------------------------------------------------------------------------
def tokens_to_reach(curve: list[tuple[int, float]], target: float) -> float | None:
    """The first point where a validation curve [(tokens, bpb)] reaches `target`, linearly
    interpolated between evaluations; None if it never does."""
    for (t0, b0), (t1, b1) in zip(curve, curve[1:]):
        if b1 <= target:
            if b0 <= target:
                return float(t0)
            return t0 + (t1 - t0) * (b0 - target) / (b0 - b1)
    return float(curve[0][0]) if curve and curve[0][1] <= target else None


def bpb_at(curve: list[tuple[int, float]], tokens: float) -> float:
    """A validation curve's bits/byte at `tokens`, linearly interpolated."""
    for (t0, b0), (t1, b1) in zip(curve, curve[1:]):
        if t0 <= tokens <= t1:
            return b0 + (b1 - b0) * (tokens - t0) / (t1 - t0) if t1 > t0 else b1
    return curve[-1][1]


def copy_asymmetry(run_dir: Path, d: int) -> float:
    """||E[:, :d] - E[:, d:2d]|| / ||E[:, :d]|| of the trained widened model's embedding: 0 while
    the two copies of the stream are still copies."""
    model, _, _ = load_model(run_dir)
    e = model.embed.weight.detach()
    return float((e[:, :d] - e[:, d : 2 * d]).norm() / e[:, :d].norm())


def strip_private(obj):
    """The result without the keys kept for the script's own use (leading underscore)."""
    if isinstance(obj, dict):
        return {k: strip_private(v) for k, v in obj.items() if not k.startswith("_")}
    if isinstance(obj, list):
        return [strip_private(v) for v in obj]
    return obj


def spread(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "mean": statistics.fmean(xs),
        "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
        "min": min(xs),
        "max": max(xs),
    }


def fmt(s: dict, digits: int = 2, suffix: str = "") -> str:
    if not s.get("n"):
        return "-"
    return f"{s['mean']:.{digits}f}{suffix} ± {s['std']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


# ---- the three measurements ----------------------------------------------------------------------
def widened_vs_scratch(a, base: list[str], tmp: Path) -> dict:
    from adamba.surgery.widen import widen_checkpoint

    small_shape = shape(a.d_small, a.heads_small, max(1, a.heads_small // 2))
    per_seed = []
    for i in range(a.seeds):
        seed = 1337 + i
        print(f"\n[1] seed {seed}", flush=True)
        small = train(tmp / f"small-{seed}", base + small_shape, a.small_steps, seed)
        variants = {}
        set_list = None
        for noise in a.noise + (a.ablation_noise if i == 0 else []):
            wide_ckpt = tmp / f"widen-{seed}-{noise:g}"
            widen_checkpoint(str(small["dir"]), str(wide_ckpt), a.d_big, noise=noise, overwrite=True)
            rec = json.loads((wide_ckpt / "surgery.json").read_text())
            set_list = rec["set"]
            w = train(
                tmp / f"widened-{seed}-n{noise:g}",
                base + small_shape + set_list,
                a.steps,
                seed + 1000,  # a data order other than the small model's
                init_from=wide_ckpt,
            )
            w["curve"] = [(0, small["final_bpb"])] + w["curve"]  # widening keeps the function
            w["surgery"] = {k: rec[k] for k in ("method", "d_model", "mlp_hidden", "noise", "set")}
            w["surgery"]["max_abs_logit_diff"] = rec["max_abs_logit_diff"]
            w["copy_asymmetry"] = copy_asymmetry(Path(w["dir"]), a.d_small)
            variants[f"{noise:g}"] = w
        scratch = train(tmp / f"scratch-{seed}", base + small_shape + set_list, a.steps, seed)
        target, st = scratch["final_bpb"], scratch["tokens"]
        small_flops = small["tokens"] * small["train_flops_per_token"]
        for w in variants.values():
            reach = tokens_to_reach(w["curve"], target)
            w["tokens_to_reach_scratch"] = reach
            w["ratio_excl_small"] = st / reach if reach else None
            w["ratio_incl_small"] = st / (reach + small["tokens"]) if reach is not None else None
            w["flops_ratio_incl_small"] = (
                st * scratch["train_flops_per_token"] / (small_flops + reach * w["train_flops_per_token"])
                if reach is not None
                else None
            )
            # not reached: the ratio is below what reaching it at the end would have given
            w["ratio_incl_small_upper_bound"] = (
                st / (w["tokens"] + small["tokens"]) if reach is None else None
            )
            w["bpb_at_equal_total_tokens"] = bpb_at(w["curve"], max(0, st - small["tokens"]))
            w["bpb_at_scratch_tokens"] = bpb_at(w["curve"], st)
        per_seed.append({"seed": seed, "small": small, "scratch": scratch, "widened": variants})

    summary = {}
    for noise in a.noise + a.ablation_noise:
        k = f"{noise:g}"
        ws = [s["widened"][k] for s in per_seed if k in s["widened"]]
        summary[k] = {
            "runs": len(ws),
            "reached": sum(w["tokens_to_reach_scratch"] is not None for w in ws),
            "ratio_incl_small": spread([w["ratio_incl_small"] for w in ws]),
            "ratio_excl_small": spread([w["ratio_excl_small"] for w in ws]),
            "flops_ratio_incl_small": spread([w["flops_ratio_incl_small"] for w in ws]),
            "tokens_to_reach_excl_small": spread([w["tokens_to_reach_scratch"] for w in ws]),
            "bpb_at_equal_total_tokens": spread([w["bpb_at_equal_total_tokens"] for w in ws]),
            "final_bpb": spread([w["final_bpb"] for w in ws]),
            "copy_asymmetry": spread([w["copy_asymmetry"] for w in ws]),
        }
    summary["scratch_final_bpb"] = spread([s["scratch"]["final_bpb"] for s in per_seed])
    summary["small_final_bpb"] = spread([s["small"]["final_bpb"] for s in per_seed])

    print(
        f"\n1. widened (d{a.d_small} x {a.small_steps} steps -> d{a.d_big} x {a.steps}) vs scratch d{a.d_big} "
        f"x {a.steps} steps; tokens to reach the scratch model's final val bpb"
    )
    print(
        f"  {'seed':>5} {'noise':>6} {'small bpb':>9} {'scratch':>8} {'widened':>8} {'@eq.tok':>8} "
        f"{'reach tok':>10} {'+small':>10} {'ratio incl':>10} {'excl':>6} {'FLOPs':>6} {'asym':>6}"
    )
    for s in per_seed:
        for k, w in s["widened"].items():
            reach = w["tokens_to_reach_scratch"]
            both = reach + s["small"]["tokens"] if reach is not None else None
            r1, r2, r3 = w["ratio_incl_small"], w["ratio_excl_small"], w["flops_ratio_incl_small"]
            print(
                f"  {s['seed']:>5} {k:>6} {s['small']['final_bpb']:>9.4f} {s['scratch']['final_bpb']:>8.4f} "
                f"{w['final_bpb']:>8.4f} {w['bpb_at_equal_total_tokens']:>8.4f} "
                f"{f'{reach:,.0f}' if reach is not None else 'never':>10} "
                f"{f'{both:,.0f}' if both is not None else '-':>10} "
                f"{f'{r1:.2f}x' if r1 else '-':>10} {f'{r2:.2f}x' if r2 else '-':>6} "
                f"{f'{r3:.2f}x' if r3 else '-':>6} {w['copy_asymmetry']:>6.3f}"
            )
    for noise in a.noise + a.ablation_noise:
        s = summary[f"{noise:g}"]
        print(
            f"  noise {noise:g}: reached {s['reached']}/{s['runs']}; scratch/widened tokens incl. small "
            f"{fmt(s['ratio_incl_small'])}, excl. {fmt(s['ratio_excl_small'])}, FLOPs incl. "
            f"{fmt(s['flops_ratio_incl_small'])}"
        )
    return {"per_seed": per_seed, "summary": summary}


def inject_vs_dense(a, dense: dict, tmp: Path) -> dict:
    from adamba.surgery.inject import inject_checkpoint

    dense_dir, dense_over = Path(dense["dir"]), dense["_over"]
    injected = tmp / "injected"
    inject_checkpoint(str(dense_dir), str(injected), overwrite=True)
    rec = json.loads((injected / "surgery.json").read_text())
    grown = dense_over + [f"model.n_layer={len(rec['pattern'])}", f"model.pattern={rec['pattern']}"]
    seed = 1337 + 2000  # a fresh data order, the same for the three runs
    print(f"\n[2] from {dense_dir.name}: inject-mamba -> {rec['pattern']}", flush=True)
    runs = {
        "dense, all weights": train(tmp / "more-dense", dense_over, a.extra_steps, seed, init_from=dense_dir),
        "inject-mamba, new layers only": train(
            tmp / "more-inject-new", grown, a.extra_steps, seed, init_from=injected, train_only=["@M"]
        ),
        "inject-mamba, all weights": train(
            tmp / "more-inject-all", grown, a.extra_steps, seed, init_from=injected
        ),
    }
    start = dense["final_bpb"]
    print(f"\n2. {a.extra_steps} more steps from the trained dense d{a.d_big} model (val bpb {start:.4f})")
    print(
        f"  {'run':<30} {'pattern':<8} {'params':>9} {'trained':>9} {'GFLOP/tok':>9} {'tok/s':>7} {'val bpb':>8}"
    )
    for name, r in runs.items():
        print(
            f"  {name:<30} {r['pattern']:<8} {r['params']:>9,} {r['trained_params']:>9,} "
            f"{r['train_flops_per_token'] / 1e9:>9.4f} {r['tok_s']:>7,.0f} {r['final_bpb']:>8.4f}"
        )
    return {"from": str(dense_dir), "start_bpb": start, "surgery": rec, "runs": runs}


def big_shape(a) -> list[str]:
    """The widened model's shape (what widen makes of the small one at d_big = k x d_small)."""
    k = a.d_big // a.d_small
    return shape(a.d_big, a.heads_small * k, max(1, a.heads_small // 2) * k)


def moe_vs_dense(a, base: list[str], tmp: Path) -> dict:
    dense = base + big_shape(a) + ["model.mlp.act=swiglu"]
    seed = 1337
    print("\n[3] MoE vs dense", flush=True)
    runs = {"dense SwiGLU": train(tmp / "dense-swiglu", dense, a.moe_steps, seed)}
    hidden = 4 * a.d_big  # the dense MLP's (mlp.ratio 4)
    for spec in a.moe:  # EXPERTSxTOPK[/DIV]: expert hidden = the dense MLP's / DIV
        e, rest = spec.split("x")
        k, div = (rest.split("/") + ["1"])[:2]
        e, k, h = int(e), int(k), hidden // int(div)
        over = dense + ["model.ffn=moe", f"model.moe.n_experts={e}", f"model.moe.top_k={k}"]
        over += [f"model.moe.ratio={h / a.d_big}"]
        runs[f"MoE {e}x{h} top-{k}"] = train(tmp / f"moe-{e}x{k}h{h}", over, a.moe_steps, seed)
    for r in runs.values():
        model, _, _ = load_model(Path(r["dir"]))
        inactive = 0
        for b in model.blocks:
            m = b.mlp
            if hasattr(m, "n_experts"):
                per_expert = (
                    m.gate_up_proj[0].numel()
                    + m.gate_up_proj_bias[0].numel()
                    + m.down_proj[0].numel()
                    + m.down_proj_bias[0].numel()
                )
                inactive += (m.n_experts - m.top_k) * per_expert
        r["active_params"] = r["params"] - inactive
    d = runs["dense SwiGLU"]
    print(f"\n3. MoE vs dense at d{a.d_big}, {a.moe_steps} steps each ({d['tokens']:,} tokens)")
    print(
        f"  {'model':<24} {'params':>10} {'active':>10} {'GFLOP/tok':>9} {'tok/s':>7} {'vs dense':>8} {'val bpb':>8}"
    )
    for name, r in runs.items():
        print(
            f"  {name:<24} {r['params']:>10,} {r['active_params']:>10,} {r['train_flops_per_token'] / 1e9:>9.4f} "
            f"{r['tok_s']:>7,.0f} {r['tok_s'] / d['tok_s']:>7.2f}x {r['final_bpb']:>8.4f}"
        )
    return {"runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="a tiny smoke version (~30 s), JSON in the temp folder"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--d-small", type=int, default=64)
    ap.add_argument("--d-big", type=int, default=128)
    ap.add_argument("--heads-small", type=int, default=2, help="query heads of the small model (KV: half)")
    ap.add_argument("--small-steps", type=int, default=250)
    ap.add_argument("--steps", type=int, default=500, help="scratch and widened runs")
    ap.add_argument("--noise", default="1", help="widen noise values, one widened run each per seed")
    ap.add_argument("--ablation-noise", default="0", help="more noise values, first seed only")
    ap.add_argument("--extra-steps", type=int, default=250, help="inject-mamba vs dense")
    ap.add_argument("--moe-steps", type=int, default=400)
    ap.add_argument(
        "--moe",
        default="4x1,8x2/2",
        help="MoE variants EXPERTSxTOPK[/DIV] (expert hidden = the dense MLP's / DIV), comma-separated",
    )
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", help="keep the runs in this folder (default: a temp folder, deleted)")
    ap.add_argument("--json", help="result file (default results/surgery.json; --quick: in the temp folder)")
    a = ap.parse_args()
    max_chars = 0
    if a.quick:
        a.seeds, a.d_small, a.d_big, a.heads_small = 1, 32, 64, 2
        a.small_steps, a.steps, a.extra_steps, a.moe_steps = 30, 60, 30, 40
        a.eval_every, a.eval_batches, a.vocab, a.batch, a.seq = 10, 2, 512, 8, 64
        max_chars = 300_000
    a.noise = [float(x) for x in a.noise.split(",")]
    a.ablation_noise = [float(x) for x in a.ablation_noise.split(",") if x and float(x) not in a.noise]
    a.moe = [x for x in a.moe.split(",") if x]
    parts = {int(x) for x in a.parts.split(",")}
    torch.set_num_threads(a.threads)
    t_all = time.perf_counter()
    tmp = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="adamba-surgery-"))
    tmp.mkdir(parents=True, exist_ok=True)
    texts = [p for p in TEXTS if p.is_file()]
    if not texts:
        sys.exit("../shared/data (Tiny Shakespeare, WikiText-2) not found: this benchmark needs real text")
    t = time.perf_counter()
    data = prepare(texts, tmp / "data", a.vocab, max_chars)
    print(
        f"data: {data['train_tokens']:,} train / {data['val_tokens']:,} val tokens (vocab {data['vocab']}), "
        f"{time.perf_counter() - t:.1f} s; runs in {tmp}",
        flush=True,
    )
    base = (
        data["overrides"]
        + MAMBA
        + [
            "model.n_layer=4",
            f"model.max_seq_len={a.seq}",
            f"data.seq_len={a.seq}",
            f"train.batch_size={a.batch}",
            "train.schedule=constant",
            "train.warmup_frac=0.05",
            f"train.eval_every={a.eval_every}",
            f"train.eval_batches={a.eval_batches}",
            "train.ckpt_every=0",
            f"train.threads={a.threads}",
            "train.device=cpu",
            "run.progress=false",
            "run.tensorboard=false",
        ]
    )
    result = {
        "config": {k: v for k, v in vars(a).items() if k not in ("keep", "json")},
        "data": {k: v for k, v in data.items() if k != "overrides"},
        "base_overrides": [o for o in base if not o.startswith("data.")],
        "preset": "tiny-cpu",
        "threads": a.threads,
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
    }
    walls = {}
    if 1 in parts:
        t = time.perf_counter()
        result["widened_vs_scratch"] = widened_vs_scratch(a, base, tmp)
        walls["widened_vs_scratch"] = time.perf_counter() - t
    if 2 in parts:
        t = time.perf_counter()
        if 1 in parts:
            dense = result["widened_vs_scratch"]["per_seed"][0]["scratch"]
        else:  # part 1 not run: train the dense model it would have left
            dense = train(tmp / "scratch-1337", base + big_shape(a), a.steps, 1337)
        result["inject_vs_dense"] = inject_vs_dense(a, dense, tmp)
        walls["inject_vs_dense"] = time.perf_counter() - t
    if 3 in parts:
        t = time.perf_counter()
        result["moe_vs_dense"] = moe_vs_dense(a, base, tmp)
        walls["moe_vs_dense"] = time.perf_counter() - t
    walls["total"] = time.perf_counter() - t_all
    result["wall_s"] = walls
    result["load_avg_end"] = os.getloadavg()
    quick_json = Path(tempfile.gettempdir()) / "adamba-surgery-quick.json"
    path = Path(a.json) if a.json else (quick_json if a.quick else RESULTS / "surgery.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strip_private(result), indent=2))
    print(
        f"\nwall {walls['total']:.0f} s ({', '.join(f'{k} {v:.0f} s' for k, v in walls.items())}) -> {path}"
    )
    if not a.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
