"""Elastic compute, the models: corpora, the training recipe, and each shape's learning rate.

    python benchmarks/elastic_train.py prepare --text ../shared/data/tinyshakespeare/input.txt --out runs/el-ts
    python benchmarks/elastic_train.py prepare --quickstart runs/quickstart --out runs/el-qs   # stdlib corpus
    python benchmarks/elastic_train.py train --out runs/el-ts                  # elastic + two dense peers
    python benchmarks/elastic_train.py train --out runs/el-ts256 --d-model 256 # the same at d256
    python benchmarks/elastic_train.py lr-sweep --out runs/el-ts --only elastic --lrs 1e-3,2e-3

`prepare` holds out the last 10% of a text (by characters, cut at a line) as validation, trains
a byte-level BPE tokenizer on the rest and writes shards, or links a quickstart run's corpus.
`train` trains three models on the same tokens and steps (400 by default): an 8-layer model
with Matryoshka sandwich sampling, the predictor, the early-exit loss and the gate-calibration
phase (the config defaults, spelled out in common.ELASTIC; `--set` adds overrides), a dense
model of the same shape (the dense baseline of the same parameters and tokens) and a dense model
shaped like the elastic model's half-width sub-network (half the heads, half the MLP units),
for MatFormer's "sub-model within 5% of a separately trained one". `lr-sweep` trains shapes at
other learning rates and scores every width on the whole validation split
(results/elastic-lr-<out>.json). Measure the models with elastic_measure.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import MODELS, RESULTS, link_quickstart, prepare, run_name, token_bytes, train_one, val_bpb

from adamba.errors import AdambaError


def lr_sweep(out: Path, names: list[str], lrs: list[str], d_model: int | None, steps: int) -> dict:
    """Is each shape trained at a fair learning rate? Trains `names` at every rate in `lrs` on
    out/'s data (same recipe, steps and seed as `train`; the elastic model without its gate
    calibration, which does not touch the LM) under out/lr-sweep/<name>-lr<rate>, and scores
    each on the whole validation split next to the models `train` left in out/ (at the rate in
    their config). Runs already trained are only scored, so an interrupted sweep resumes; rows
    merge into results/elastic-lr-<out>.json, so sweeps of other shapes or rates add up, also
    when run side by side (one process per shape on a 2-core machine). Returns this call's rows.
    d_model None: the width of the models `train` left in out/ (else 128)."""
    import json

    from adamba.checkpoint import load_model, read_checkpoint

    def latest(run_dir: Path):
        """The run's latest checkpoint, None if it has none."""
        try:
            return read_checkpoint(run_dir)
        except AdambaError:
            return None

    def done_steps(run_dir: Path) -> int | None:
        ckpt = latest(run_dir)
        return None if ckpt is None else int(ckpt.state.get("step", 0))

    if d_model is None:
        found = [c for n in MODELS if (c := latest(out / n)) is not None]
        d_model = found[0].cfg.model.d_model if found else 128
    torch.set_num_threads(1)
    path = RESULTS / f"elastic-lr-{run_name(out)}.json"
    res: dict[str, dict] = {}
    for name in names:
        runs = [(None, out / name)] + [(lr, out / "lr-sweep" / f"{name}-lr{lr}") for lr in lrs]
        for lr, run_dir in runs:
            done = done_steps(run_dir)
            if lr is not None and (done is None or done < steps):
                extra = ["elastic.calibrate_steps=0"] if name == "elastic" else []
                train_one(out, name, steps, extra, d_model, float(lr), run_dir, resume=done is not None)
            elif done is None:
                continue
            model, tok, ckpt = load_model(run_dir)
            tb = token_bytes(tok)
            L = len(model.blocks)
            runs_at = (
                {f"width={w:g}": [w] * L for w in ckpt.cfg.elastic.widths}
                if name == "elastic"
                else {"width=1": None}
            )
            bpb = {k: val_bpb(model, out, tb, widths) for k, widths in runs_at.items()}
            row = {
                "lr": ckpt.cfg.train.lr,
                "d_model": model.cfg.d_model,
                "steps": ckpt.state.get("step"),
                "bpb": bpb,
            }
            res[f"{name}-lr{ckpt.cfg.train.lr:g}"] = row
            print(
                f"{name:8s} lr {ckpt.cfg.train.lr:g}: " + ", ".join(f"{k} {v:.4f}" for k, v in bpb.items()),
                flush=True,
            )
            # merge into the file as it is now: earlier sweeps' rows, and a sweep of another
            # shape running beside this one (they write at different times)
            RESULTS.mkdir(parents=True, exist_ok=True)
            rows = json.loads(path.read_text()) if path.exists() else {}
            path.write_text(json.dumps(dict(sorted({**rows, **res}.items())), indent=2))
    return res


def parse_lrs(text: str) -> list[str]:
    lrs = [x for x in text.split(",") if x]
    for x in lrs:
        try:
            ok = float(x) > 0
        except ValueError:
            ok = False
        if not ok:
            raise SystemExit(f"--lrs: {x!r} is not a positive learning rate (e.g. --lrs 1e-3,2e-3)")
    return lrs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("prepare", help="hold out 10%% of a text, train a tokenizer, write shards")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a text file: last 10%% held out, tokenizer trained on the rest")
    src.add_argument("--quickstart", type=Path, help="reuse an `adamba quickstart --out DIR` corpus")
    a.add_argument("--out", required=True, type=Path)
    a.add_argument("--vocab", type=int, default=1024)
    t = sub.add_parser("train", help="the elastic model and its two dense peers")
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--only", choices=MODELS, action="append")
    t.add_argument("--set", action="append", default=[], help="extra overrides for the elastic model")
    t.add_argument("--d-model", type=int, default=128, help="width of all three models (8 heads)")
    t.add_argument("--lr", type=float, default=3e-3, help="learning rate of all three models")
    ls = sub.add_parser("lr-sweep", help="each shape at other learning rates")
    ls.add_argument("--out", required=True, type=Path)
    ls.add_argument("--only", choices=MODELS, action="append")
    ls.add_argument("--lrs", default="1e-3,2e-3,6e-3", help="rates besides the one `train` used")
    ls.add_argument("--d-model", type=int, default=None, help="default: the width `train` used in --out")
    ls.add_argument("--steps", type=int, default=400)
    args = p.parse_args()
    if args.cmd == "prepare":
        if args.quickstart:
            link_quickstart(args.quickstart, args.out)
        else:
            prepare(args.text, args.out, args.vocab)
    elif args.cmd == "train":
        for name in args.only or MODELS:
            train_one(args.out, name, args.steps, args.set, args.d_model, args.lr)
    else:
        lr_sweep(args.out, args.only or list(MODELS), parse_lrs(args.lrs), args.d_model, args.steps)


if __name__ == "__main__":
    main()
