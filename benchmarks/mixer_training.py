"""Dense vs hybrid vs KDA at equal size and token budget: does each mixer mix learn?

Trains the three ~1.77M-parameter presets `tiny-cpu` (attention only), `adamba-hybrid-tiny`
(attention + Mamba2, "MAM") and `kda-tiny` (KDA : attention 3:1, "KKKA") with `adamba.train`'s
own `run(cfg)` on the quickstart corpus (Python standard library source): same tokenizer, data,
batch, sequence length, seed and number of steps. Each model is then scored on the same
validation batches (bits per byte) next to the unigram baseline, and `adamba sample` is run on
each checkpoint (prefill + per-layer state decoding: KV cache for A, recurrent state for M/K).

The data comes from the project's pipeline: `adamba quickstart --out DIR` writes DIR/tokenizer.json
and DIR/data/{train,val}/manifest.jsonl; this script runs a short quickstart to build it when DIR
has none. The runs are sequential, so wall times depend on the machine load at the time (recorded).

    python benchmarks/mixer_training.py [--data runs/quickstart] [--steps 600] [--threads 2]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP stalls on shared cores

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from adamba.checkpoint import load_model  # noqa: E402
from adamba.config import load_config  # noqa: E402
from adamba.data.loader import TokenLoader  # noqa: E402
from adamba.data.shards import load_tokens, read_manifest  # noqa: E402
from adamba.data.tokenizer import Tokenizer  # noqa: E402
from adamba.eval.bpb import evaluate_bpb, unigram_bpb  # noqa: E402
from adamba.train import trainer  # noqa: E402

PRESETS = {"dense": "tiny-cpu", "hybrid": "adamba-hybrid-tiny", "kda": "kda-tiny"}


def ensure_data(data: Path) -> tuple[Path, Path, Path]:
    """(tokenizer.json, train manifest, val manifest), built by a short quickstart if missing."""
    paths = (
        data / "tokenizer.json",
        data / "data" / "train" / "manifest.jsonl",
        data / "data" / "val" / "manifest.jsonl",
    )
    if not all(p.exists() for p in paths):
        from adamba.quickstart import quickstart

        print(
            f"building the quickstart corpus in {data} (stdlib source -> curate -> BPE -> shards)", flush=True
        )
        quickstart(out=data, minutes=0.2, progress=False)
    return paths


def sample_check(run_dir: Path, prompt: str, max_new: int) -> dict:
    """`adamba sample` on the checkpoint, as a user would run it."""
    cmd = [sys.executable, "-m", "adamba", "sample", "--ckpt", str(run_dir), "--prompt", prompt,
           "--max-new-tokens", str(max_new), "--temperature", "0.8", "--seed", "0"]  # fmt: skip
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return {
        "rc": p.returncode,
        "seconds": time.perf_counter() - t,
        "text": p.stdout[-400:],
        "stderr": p.stderr[-400:] if p.returncode else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/quickstart", help="quickstart output folder (built if missing)")
    ap.add_argument("--runs", default="runs/mixer_training", help="where the three runs are written")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--val-batches", type=int, default=40)
    ap.add_argument("--models", default="dense,hybrid,kda")
    ap.add_argument("--prompt", default="def ")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "mixer_training.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tok_path, train_m, val_m = ensure_data(Path(args.data))
    tok = Tokenizer.load(tok_path)
    token_bytes = tok.token_bytes()
    train_tokens = np.concatenate([load_tokens(s) for s in read_manifest(train_m)])
    val_tokens = np.concatenate([load_tokens(s) for s in read_manifest(val_m)])
    uni = unigram_bpb(train_tokens, val_tokens, token_bytes)
    # the same validation batches for every model
    n_val = max(1, min(args.val_batches, len(val_tokens) // (args.batch * args.seq_len)))
    vl = TokenLoader([str(val_m)], args.batch, args.seq_len, seed=0, prefetch=0)
    val_batches = [next(vl) for _ in range(n_val)]
    print(
        f"corpus: {len(train_tokens):,} train / {len(val_tokens):,} val tokens, vocab {tok.vocab_size}; "
        f"unigram bpb {uni:.4f}; {n_val} val batches of {args.batch}x{args.seq_len}; "
        f"{args.steps} steps x {args.batch}x{args.seq_len} tokens each; threads {args.threads}, "
        f"load avg {os.getloadavg()[0]:.2f}",
        flush=True,
    )

    rows = []
    for name in args.models.split(","):
        preset = PRESETS[name]
        cfg = load_config(preset)
        cfg.data.train, cfg.data.val, cfg.data.tokenizer = [str(train_m)], [str(val_m)], str(tok_path)
        cfg.data.seq_len = args.seq_len
        cfg.model.max_seq_len = max(cfg.model.max_seq_len, args.seq_len)
        cfg.train.batch_size, cfg.train.max_steps, cfg.train.max_minutes = args.batch, args.steps, 0.0
        cfg.train.eval_every, cfg.train.ckpt_every = 0, 0  # scored below, on the shared batches
        cfg.train.threads, cfg.train.device = args.threads, "cpu"
        cfg.run.out_dir, cfg.run.progress = str(Path(args.runs) / name), False
        load_before = os.getloadavg()[0]
        print(f"training {name} ({preset}, pattern {cfg.model.pattern!r}) ...", flush=True)
        res = trainer.run(cfg)
        model, _, _ = load_model(res.run_dir)  # the saved checkpoint, as `adamba eval` would see it
        t = time.perf_counter()
        ev = evaluate_bpb(model, val_batches, torch.as_tensor(token_bytes, dtype=torch.long))
        eval_s = time.perf_counter() - t
        sample = sample_check(res.run_dir, args.prompt, 48)
        row = {
            "model": name,
            "preset": preset,
            "pattern": "".join(cfg.model.layer_types()),
            "params": model.num_params(),
            "steps": res.steps,
            "tokens": res.tokens_seen,
            "wall_s": res.elapsed_s,
            "tok_s": res.tokens_per_s,
            "val_loss": ev["loss"],
            "val_bpb": ev["bpb"],
            "unigram_bpb": uni,
            "ratio_to_unigram": ev["bpb"] / uni,
            "eval_s": eval_s,
            "load_avg_before": load_before,
            "load_avg_after": os.getloadavg()[0],
            "sample_rc": sample["rc"],
            "sample_s": sample["seconds"],
            "sample_text": sample["text"],
            "sample_stderr": sample["stderr"],
        }
        rows.append(row)
        print(
            f"  {name}: val bpb {ev['bpb']:.4f} ({row['ratio_to_unigram']:.3f} of unigram), "
            f"{res.tokens_per_s:.0f} tok/s, {res.elapsed_s:.0f} s; sample rc {sample['rc']}",
            flush=True,
        )

    print(
        f"\nsame data, tokenizer, batch {args.batch}x{args.seq_len}, {args.steps} steps, {args.threads} threads"
    )
    print(
        f"{'model':7} {'preset':19} {'layers':9} {'params':>8} {'tokens':>9} {'wall s':>7} {'tok/s':>6} "
        f"{'val bpb':>8} {'/unigram':>8} {'sample':>6}"
    )
    for r in rows:
        print(
            f"{r['model']:7} {r['preset']:19} {r['pattern']:9} {r['params'] / 1e6:>7.2f}M {r['tokens']:>9,} "
            f"{r['wall_s']:>7.0f} {r['tok_s']:>6.0f} {r['val_bpb']:>8.4f} {r['ratio_to_unigram']:>8.3f} "
            f"{'ok' if r['sample_rc'] == 0 else 'FAIL':>6}"
        )
    print(f"unigram baseline: {uni:.4f} bpb")
    for r in rows:
        print(f"\n--- adamba sample --ckpt {r['model']} --prompt {args.prompt!r}\n{r['sample_text'].strip()}")
    meta = {
        "steps": args.steps,
        "batch": args.batch,
        "seq_len": args.seq_len,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "val_batches": n_val,
        "train_tokens": int(len(train_tokens)),
        "val_tokens": int(len(val_tokens)),
        "vocab": tok.vocab_size,
        "unigram_bpb": uni,
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
