"""Elastic compute on real text: what Matryoshka widths and early exit buy, measured.

    python benchmarks/elastic.py prepare --text ../shared/data/tinyshakespeare/input.txt --out runs/el
    python benchmarks/elastic.py train --out runs/el --steps 400      # elastic + dense full + dense half
    python benchmarks/elastic.py measure --out runs/el                # table, JSON, PNG

`prepare` holds out the last 10% of the text (by characters, cut at a line) as validation, trains
a byte-level BPE tokenizer on the rest and writes shards. `train` trains three models on the same
tokens and steps: an 8-layer model with Matryoshka sandwich sampling, a dense model of the same
shape (the dense baseline of the same parameters and tokens) and a dense model shaped like the
elastic model's half-width sub-network (half the heads, half the MLP units), for MatFormer's
"sub-model within 5% of a separately trained one". `measure` scores held-out sequences token by
token under every compute mode (batch 1, KV cache, the way generation runs) and the dense peer
in the same process, sweeps the exit threshold at full width, and writes
benchmarks/results/elastic.json and elastic.png. Timings on a shared CPU are noisy: compare the
ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adamba.config import load_config  # noqa: E402
from adamba.model import elastic as el  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"

BASE = [
    "model.d_model=128",
    "model.n_layer=8",
    "model.n_head=8",
    "model.n_kv_head=2",
    "model.mlp_ratio=4.0",
    "model.max_seq_len=128",
    "data.seq_len=128",
    "train.batch_size=16",
    "train.lr=3e-3",
    "train.eval_every=100",
    "train.eval_batches=8",
    "train.ckpt_every=100",
    "train.threads=1",
    "run.progress=false",
]
ELASTIC = ["elastic.enabled=true", "elastic.widths=[0.125, 0.25, 0.5, 1.0]"]
HALF = ["model.n_head=4", "model.n_kv_head=1", "model.head_dim=16", "model.mlp_ratio=2.0"]


def prepare(text: str, out: Path, vocab: int) -> None:
    from adamba.data.shards import write_shards
    from adamba.data.tokenizer import Tokenizer

    raw = Path(text).read_text()
    cut = raw.rfind("\n", 0, int(len(raw) * 0.9)) + 1
    train, val = raw[:cut], raw[cut:]
    # documents of ~4 KB so BOS-aligned packing sees many documents
    docs = [train[i : i + 4000] for i in range(0, len(train), 4000)]
    vdocs = [val[i : i + 4000] for i in range(0, len(val), 4000)]
    tok = Tokenizer.train(docs, vocab)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(out / "tokenizer.json")
    write_shards(docs, tok, out / "train", source="train")
    write_shards(vdocs, tok, out / "val", source="val")
    print(f"train {len(train):,} chars, val {len(val):,} chars -> {out}")


def data_overrides(out: Path) -> list[str]:
    return [
        f"data.train={out / 'train' / 'manifest.jsonl'}",
        f"data.val={out / 'val' / 'manifest.jsonl'}",
        f"data.tokenizer={out / 'tokenizer.json'}",
    ]


def train_one(out: Path, name: str, steps: int) -> None:
    from adamba.train.trainer import run

    extra = {"elastic": ELASTIC, "dense": [], "half": HALF}[name]
    over = BASE + data_overrides(out) + extra + [f"train.max_steps={steps}", f"run.out_dir={out / name}"]
    res = run(load_config("tiny-cpu", over))
    print(f"{name}: {res.steps} steps, {res.tokens_seen:,} tokens, val {res.val}, {res.elapsed_s:.0f}s")


def val_sequences(out: Path, n: int, length: int) -> list[torch.Tensor]:
    from adamba.data.shards import load_tokens, read_manifest

    toks = torch.cat(
        [
            torch.as_tensor(load_tokens(s).astype("int64"))
            for s in read_manifest(out / "val" / "manifest.jsonl")
        ]
    )
    step = max(length, (len(toks) - length) // n)
    return [toks[i * step : i * step + length] for i in range(n) if i * step + length <= len(toks)]


def bpb_of(ce: torch.Tensor, tgts: torch.Tensor, token_bytes: torch.Tensor) -> float:
    b = token_bytes[tgts]
    return float((ce * (b > 0)).sum()) / (math.log(2) * max(1, int(b.sum())))


def measure(out: Path, n_seq: int, length: int, prompt: int) -> dict:
    from adamba.serve.generate import load_model

    torch.set_num_threads(1)
    model, tok, ckpt = load_model(out / "elastic")
    ecfg = ckpt.cfg.elastic
    tb = torch.as_tensor(tok.token_bytes(), dtype=torch.long)
    seqs = val_sequences(out, n_seq, length)
    L = len(model.blocks)
    rows = {}

    def score(name, m, policy, e=ecfg):
        ce, tg, pr, summ, secs = el.teacher_forced(m, e, policy, seqs, prompt)
        summ.update(bpb=bpb_of(ce, tg, tb), tok_s=summ["tokens"] / max(1e-9, secs))
        rows[name] = summ
        print(
            f"{name:>12}  bpb {summ['bpb']:.4f}  flops {summ['flops_rel']:.3f}  exit {summ['exit_rate']:.3f}  "
            f"expand {summ['expand_rate']:.3f}  tok/s {summ['tok_s']:.0f}  hist {summ['exit_hist']}",
            flush=True,
        )
        return pr

    # dense peers first and last-ish in the same process: the dense model of the same shape
    dense_rows = {}
    for peer in ("dense", "half"):
        if (out / peer).exists():
            dm, _, dck = load_model(out / peer)
            score(f"dense-{peer}", dm, el.Policy([1.0] * len(dm.blocks)), dck.cfg.elastic)
            dense_rows[peer] = rows[f"dense-{peer}"]
    for mode in el.MODES:
        score(mode, model, el.mode_policy(mode, model, ecfg))
    # exactness of width per mode is covered by tests; here: monotone bpb in width
    for w in ecfg.widths:
        score(f"width={w:g}", model, el.Policy([w] * L))
    # threshold sweep: full width + early exit only, argmax change vs full model
    full_pred = score("full", model, el.Policy([1.0] * L))
    sweep = []
    for thr in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99):
        pr = score(f"exit@{thr}", model, el.Policy([1.0] * L, exit_threshold=thr))
        r = rows[f"exit@{thr}"]
        sweep.append(
            {
                "threshold": thr,
                "argmax_changed": float((pr != full_pred).float().mean()),
                "layer_flops_skipped": 1 - r["flops_rel"],
                "exit_rate": r["exit_rate"],
                "bpb": r["bpb"],
            }
        )
        print(
            f"   thr {thr}: argmax changed {sweep[-1]['argmax_changed']:.3%}, FLOPs skipped {sweep[-1]['layer_flops_skipped']:.3f}"
        )
    res = {"rows": rows, "sweep": sweep, "n_seq": len(seqs), "length": length, "prompt": prompt}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "elastic.json").write_text(json.dumps(res, indent=2))
    plot(res)
    return res


def plot(res: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    rows = res["rows"]
    for name in list(el.MODES) + ["dense-dense", "dense-half"]:
        if name in rows:
            r = rows[name]
            a.scatter(r["tok_s"], r["bpb"], label=name, marker="s" if name.startswith("dense") else "o")
            a.annotate(name, (r["tok_s"], r["bpb"]))
    fixed = [rows[m] for m in ("ghost", "whisper", "normal", "think") if m in rows]
    a.plot([r["tok_s"] for r in fixed], [r["bpb"] for r in fixed], "k--", lw=0.8)
    a.set_xlabel("decode tokens/s (batch 1, CPU, 1 thread)")
    a.set_ylabel("val bits/byte")
    a.set_title("compute modes")
    s = res["sweep"]
    b.plot([x["threshold"] for x in s], [x["argmax_changed"] for x in s], "o-", label="argmax changed")
    b.plot([x["threshold"] for x in s], [x["layer_flops_skipped"] for x in s], "s-", label="FLOPs skipped")
    b.set_xlabel("exit threshold (full width)")
    b.legend()
    b.set_title("early exit")
    fig.tight_layout()
    fig.savefig(RESULTS / "elastic.png", dpi=120)


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare")
    a.add_argument("--text", required=True)
    a.add_argument("--out", required=True, type=Path)
    a.add_argument("--vocab", type=int, default=1024)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--only", choices=["elastic", "dense", "half"], action="append")
    m = sub.add_parser("measure")
    m.add_argument("--out", required=True, type=Path)
    m.add_argument("--n-seq", type=int, default=8)
    m.add_argument("--length", type=int, default=128)
    m.add_argument("--prompt", type=int, default=16)
    args = p.parse_args()
    if args.cmd == "prepare":
        prepare(args.text, args.out, args.vocab)
    elif args.cmd == "train":
        for name in args.only or ["elastic", "dense", "half"]:
            train_one(args.out, name, args.steps)
    else:
        measure(args.out, args.n_seq, args.length, args.prompt)


if __name__ == "__main__":
    main()
