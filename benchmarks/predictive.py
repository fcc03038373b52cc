"""Predictive training, measured (issue 30): does skipping backward passes with a learned
prediction of AdamW's next update buy anything at equal tokens or at equal compute?

Three ways, one run, same model, data order and seed:
1. plain AdamW for `--steps` steps;
2. predictive (`predictive.enabled=true`, adamba/train/predictive.py) for the same steps, so the
   same batches (equal tokens): PREDICT steps run the forward only;
3. plain AdamW given the compute predictive used: the plain run's validation curve read at
   predictive's FLOPs (forward + backward of the real steps, forward of the PREDICT steps, the
   mode's own work; adamba/model/flops.py) and at predictive's wall-clock. The schedule is constant
   after a warm-up, so the plain curve at a point is (up to the warm-up's length, `--warmup`
   steps in both) the plain run that stops there.
Predictive runs once per variant (VARIANTS, at the end: the config's defaults and the two tuning
attempts made after measuring them). Reported per model size (`--sizes`, d_model of a 4-layer attention model) and seed: validation
bits/byte at equal tokens (end of both runs) and at equal FLOPs / equal wall-clock, the fraction
of backward passes skipped, the departures from the loss band, and the wall-clock of each run.
Data: Tiny Shakespeare from ../shared/data (last 10% held out), a byte-level BPE of `--vocab`
tokens trained by adamba, shards in a temp folder.

Caveats: tiny models, a few hundred steps on a 2-core CPU that other jobs share (wall-clock is
read from runs interleaved per seed; the FLOPs figure does not depend on the machine).

    python benchmarks/predictive.py            # the measurement (~15-25 min on 2 shared cores)
    python benchmarks/predictive.py --quick    # a smoke version (~1 min), JSON in the temp folder
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP stalls on shared cores

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from surgery import ROOT, bpb_at, fmt, prepare, spread  # noqa: E402

from adamba.config import load_config  # noqa: E402
from adamba.model import flops  # noqa: E402
from adamba.model.lm import LM  # noqa: E402
from adamba.train.monitor import read_metrics  # noqa: E402
from adamba.train.trainer import run  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
TEXT = ROOT.parent / "shared/data/tinyshakespeare/input.txt"


def train_clock(rows: list[dict]) -> list[float]:
    """Seconds of training up to each step, evaluations left out: an evaluation's time lands in
    the next row's elapsed_s, so that step counts the median time of steps of its kind (real or
    PREDICT) instead."""

    def kind(r):
        return "predict" if r.get("predictive") == "predict" else "real"

    dts = [b["elapsed_s"] - a["elapsed_s"] for a, b in zip([{"elapsed_s": 0.0}] + rows, rows)]
    after = [i > 0 and "val_bpb" in rows[i - 1] for i in range(len(rows))]
    med = {
        k: statistics.median([d for d, r, e in zip(dts, rows, after) if not e and kind(r) == k] or [0.0])
        for k in ("real", "predict")
    }
    return list(itertools.accumulate(med[kind(r)] if e else d for d, r, e in zip(dts, rows, after)))


def train(out: Path, over: list[str]) -> dict:
    """One `trainer.run`; its validation curve against tokens, FLOPs and seconds of training."""
    cfg = load_config("tiny-cpu", over + [f"run.out_dir={out}"])
    t = time.perf_counter()
    run(cfg, overwrite=True)
    wall = time.perf_counter() - t
    rows = read_metrics(out / "metrics.jsonl")
    per = flops.train_flops(LM(cfg.model), cfg.data.seq_len).total * cfg.train.batch_size * cfg.data.seq_len
    clock, curve = train_clock(rows), []
    for r, sec in zip(rows, clock):
        if "val_bpb" in r:
            f = r.get("flops", r["step"] * per)  # plain: every step a forward + backward
            curve.append(
                {
                    "step": r["step"],
                    "tokens": r["tokens"],
                    "flops": f,
                    "s": sec,
                    "bpb": r["val_bpb"],
                }
            )
    last = rows[-1]
    out_ = {"curve": curve, "final_bpb": curve[-1]["bpb"], "wall_s": wall, "train_s": clock[-1]}
    out_["flops"] = last.get("flops", last["step"] * per)
    if "predictive" in last:
        phases = [r["predictive"] for r in rows]
        out_.update(
            skipped=last["backward_skipped"] / last["forwards"],
            departures=sum(
                1
                for a, b in zip(rows, rows[1:])
                if a["predictive"] == "predict"
                and b["predictive"] == "correct"
                and a["horizon"] > b["horizon"]
            ),
            phases={p: phases.count(p) for p in ("warmup", "full", "predict", "correct")},
            dyn_error=last.get("dyn_error"),
            corr_error=last.get("corr_error"),
            corr_base=last.get("corr_base"),
        )
    return out_


def at(curve: list[dict], key: str, x: float) -> float:
    return bpb_at([(c[key], c["bpb"]) for c in curve], x)


def compare(a, base: list[str], tmp: Path) -> dict:
    """Per size and seed: one plain run, then one predictive run per variant, interleaved so
    machine load hits them alike; the per-seed figures and, per variant, their spread."""
    sizes = {}
    for d in a.sizes:
        shape = [f"model.d_model={d}", f"model.attn.n_head={max(2, d // 32)}", "model.attn.n_kv_head=1"]
        per_seed = []
        for seed in a.seeds:
            over = base + shape + [f"train.seed={seed}"]
            plain = train(tmp / f"plain-{d}-{seed}", over)
            print(
                f"  d{d} seed {seed}: plain {plain['final_bpb']:.4f} ({plain['train_s']:.0f} s)", flush=True
            )
            row = {"seed": seed, "plain": plain, "variants": {}}
            for name in a.variants:
                pred = train(tmp / f"{name}-{d}-{seed}", over + ["predictive.enabled=true", *VARIANTS[name]])
                v = row["variants"][name] = {
                    "predictive": pred,
                    "plain_at_equal_flops": at(plain["curve"], "flops", pred["flops"]),
                    "plain_at_equal_wall": at(plain["curve"], "s", pred["train_s"]),
                }
                print(
                    f"  d{d} seed {seed} {name}: {pred['final_bpb']:.4f} ({pred['train_s']:.0f} s, "
                    f"{pred['skipped']:.0%} backward skipped, {pred['departures']} departures); plain at its "
                    f"FLOPs {v['plain_at_equal_flops']:.4f}, at its wall-clock {v['plain_at_equal_wall']:.4f}",
                    flush=True,
                )
            per_seed.append(row)
        sizes[f"d{d}"] = {
            "per_seed": per_seed,
            "summary": {name: summary(per_seed, name) for name in a.variants},
        }
    return sizes


def summary(per_seed: list[dict], name: str) -> dict:
    pick = {
        "plain_bpb": lambda r, v: r["plain"]["final_bpb"],
        "predictive_bpb": lambda r, v: v["predictive"]["final_bpb"],
        "plain_bpb_equal_flops": lambda r, v: v["plain_at_equal_flops"],
        "plain_bpb_equal_wall": lambda r, v: v["plain_at_equal_wall"],
        "gap_equal_tokens": lambda r, v: v["predictive"]["final_bpb"] - r["plain"]["final_bpb"],
        "gap_equal_flops": lambda r, v: v["predictive"]["final_bpb"] - v["plain_at_equal_flops"],
        "gap_equal_wall": lambda r, v: v["predictive"]["final_bpb"] - v["plain_at_equal_wall"],
        "skipped": lambda r, v: v["predictive"]["skipped"],
        "departures": lambda r, v: v["predictive"]["departures"],
        "flops_ratio": lambda r, v: v["predictive"]["flops"] / r["plain"]["flops"],
        "wall_ratio": lambda r, v: v["predictive"]["train_s"] / r["plain"]["train_s"],
    }
    return {k: spread([f(r, r["variants"][name]) for r in per_seed]) for k, f in pick.items()}


def table(sizes: dict, variants: list[str]) -> None:
    print(
        "\nvalidation bits/byte, mean ± std (min-max) over seeds; gap = predictive - plain (negative: predictive wins)"
    )
    head = ["size", "variant", "plain", "predictive", "gap equal tokens", "gap equal FLOPs", "gap equal wall"]
    print(" | ".join(head + ["skipped", "FLOPs", "wall"]))
    for size, r in sizes.items():
        for name in variants:
            s = r["summary"][name]
            cells = [size, name] + [fmt(s[k], 4) for k in ("plain_bpb", "predictive_bpb")]
            cells += [fmt(s[k], 4) for k in ("gap_equal_tokens", "gap_equal_flops", "gap_equal_wall")]
            cells += [
                f"{s['skipped']['mean']:.0%}",
                f"{s['flops_ratio']['mean']:.2f}x",
                f"{s['wall_ratio']['mean']:.2f}x",
            ]
            print(" | ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke version (~1 min), JSON in the temp folder")
    ap.add_argument("--sizes", default="64,128", help="d_model of each model size, comma-separated")
    ap.add_argument("--seeds", default="1337,1338,1339")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=15, help="learning-rate warm-up steps (both arms)")
    ap.add_argument("--vocab", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--variants",
        default="default,short,alternate",
        help="predictive settings to measure, comma-separated names of VARIANTS (each a full plain+predictive run)",
    )
    ap.add_argument(
        "--json", help="result file (default results/predictive.json; --quick: in the temp folder)"
    )
    a = ap.parse_args()
    max_chars = 0
    if a.quick:
        a.sizes, a.seeds, a.steps, a.warmup, a.eval_every, a.vocab, a.batch, a.seq = (
            "32",
            "1337",
            60,
            3,
            10,
            512,
            8,
            64,
        )
        max_chars = 200_000
    a.sizes = [int(x) for x in a.sizes.split(",")]
    a.seeds = [int(x) for x in a.seeds.split(",")]
    a.variants = a.variants.split(",")
    torch.set_num_threads(a.threads)
    if not TEXT.is_file():
        sys.exit(f"{TEXT} not found: this benchmark needs Tiny Shakespeare in ../shared/data")
    tmp = Path(tempfile.mkdtemp(prefix="adamba-predictive-"))
    t_all = time.perf_counter()
    data = prepare([TEXT], tmp / "data", a.vocab, max_chars)
    print(
        f"data: {data['train_tokens']:,} train / {data['val_tokens']:,} val tokens; runs in {tmp}", flush=True
    )
    base = data["overrides"] + [
        "model.n_layer=4",
        f"model.max_seq_len={a.seq}",
        f"data.seq_len={a.seq}",
        f"train.batch_size={a.batch}",
        f"train.max_steps={a.steps}",
        "train.schedule=constant",
        f"train.warmup_frac={a.warmup / a.steps}",
        f"train.eval_every={a.eval_every}",
        f"train.eval_batches={a.eval_batches}",
        "train.ckpt_every=0",
        f"train.threads={a.threads}",
        "train.device=cpu",
        "run.progress=false",
        "run.tensorboard=false",
    ]
    result = {
        "config": {k: v for k, v in vars(a).items() if k != "json"},
        "data": {k: v for k, v in data.items() if k != "overrides"},
        "base_overrides": [o for o in base if not o.startswith("data.")],
        "torch": torch.__version__,
        "load_avg_start": os.getloadavg(),
    }
    result["sizes"] = compare(a, base, tmp)
    result["variants"] = {name: VARIANTS[name] for name in a.variants}
    table(result["sizes"], a.variants)
    result["wall_s"] = time.perf_counter() - t_all
    result["load_avg_end"] = os.getloadavg()
    quick_json = Path(tempfile.gettempdir()) / "adamba-predictive-quick.json"
    path = Path(a.json) if a.json else (quick_json if a.quick else RESULTS / "predictive.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"\nwall {result['wall_s']:.0f} s -> {path}")
    shutil.rmtree(tmp, ignore_errors=True)


# the config defaults, and the tuning attempts made after measuring them (benchmarks/README.md)
VARIANTS = {
    "default": [],
    # attempt 1: the default's PREDICT runs overshoot after ~4 steps and the band notices late:
    # shorter runs, a tighter band
    "short": ["predictive.horizon=2", "predictive.max_horizon=4", "predictive.band=1.0"],
    # attempt 2: at most 2 predicted steps between pairs of real ones (AdamW's moments stay fresh)
    "alternate": ["predictive.horizon=1", "predictive.max_horizon=2", "predictive.band=1.0"],
}

if __name__ == "__main__":
    main()
