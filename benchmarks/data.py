"""Data pipeline throughput, each stage against its bare peer in the same run.

Tokenisation: `write_shards` (encode + BOS + uint16 packing + sha256 + fsync'd shards and
manifest) with 1 and 2 worker processes, against raw Hugging Face `tokenizers`
`encode_batch` / `encode_batch_fast` on the same documents with the same tokenizer. Timings are
interleaved over rounds so machine noise hits all alike; the median is reported.
Loader: TokenLoader (BOS-aligned windows, mixture sampler, prefetch thread) against bare
numpy slicing of the same memory-mapped shards at random offsets.

Real text from ../shared/data (Tiny Shakespeare + WikiText-2 valid, split into paragraphs);
the benchmark says so and skips when the folder is absent.

    python benchmarks/data.py [--rounds 3] [--vocab 8192]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adamba.data.loader import TokenLoader
from adamba.data.shards import load_tokens, read_manifest, write_shards
from adamba.data.tokenizer import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FILES = ["tinyshakespeare/input.txt", "wikitext2/valid.txt"]
RESULTS = ROOT / "benchmarks" / "results" / "data.json"


def load_docs() -> list[str] | None:
    paths = [SHARED / f for f in FILES]
    if not all(p.is_file() for p in paths):
        return None
    docs = []
    for p in paths:
        docs += [d for d in p.read_text(encoding="utf-8").split("\n\n") if d.strip()]
    return docs


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench_tokenisation(docs: list[str], tok: Tokenizer, rounds: int, tmp: Path) -> dict:
    mb = sum(len(d.encode("utf-8")) for d in docs) / 1e6
    hf = tok.hf
    runs = {
        "raw encode_batch": lambda: hf.encode_batch(docs, add_special_tokens=False),
        "raw encode_batch_fast": lambda: hf.encode_batch_fast(docs, add_special_tokens=False),
        "write_shards, 1 worker": lambda: write_shards(docs, tok, tmp / "w1"),
        "write_shards, 2 workers": lambda: write_shards(docs, tok, tmp / "w2", workers=2),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    peer = min(med["raw encode_batch"], med["raw encode_batch_fast"])
    rows = [
        {
            "what": k,
            "seconds": med[k],
            "mb_per_s": mb / med[k],
            "vs_raw": peer / med[k],
            "all_seconds": times[k],
        }
        for k in runs
    ]
    n_tok = sum(s.tokens for s in read_manifest(tmp / "w1"))
    return {"mb": mb, "documents": len(docs), "tokens": n_tok, "rows": rows}


def bench_loader(tok_dir: Path, rounds: int, batch: int = 16, seq: int = 256, steps: int = 300) -> dict:
    shards = read_manifest(tok_dir)
    arrays = [load_tokens(s) for s in shards]
    rng = np.random.default_rng(0)

    def raw():  # the floor: random windows sliced from the memmaps, no packing, no sampler
        for _ in range(steps):
            buf = np.empty((batch, seq + 1), dtype=np.int64)
            for r in range(batch):
                a = arrays[rng.integers(len(arrays))]
                o = rng.integers(0, len(a) - seq - 1)
                buf[r] = a[o : o + seq + 1]
            torch.from_numpy(buf[:, :-1].copy()), torch.from_numpy(buf[:, 1:].copy())

    def loader(prefetch: int):
        ld = TokenLoader([str(tok_dir)], batch, seq, seed=0, prefetch=prefetch, verify=False)

        def go():
            for _ in range(steps):
                next(ld)

        return go

    runs = {
        "numpy memmap slicing": raw,
        "TokenLoader prefetch=0": loader(0),
        "TokenLoader prefetch=2": loader(2),
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    n = steps * batch * seq
    return {
        "batch": batch,
        "seq_len": seq,
        "rows": [
            {"what": k, "tokens_per_s": n / med[k], "vs_raw": med["numpy memmap slicing"] / med[k]}
            for k in runs
        ],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    docs = load_docs()
    if docs is None:
        print(f"skipped: real text not found under {SHARED} ({', '.join(FILES)})")
        return
    t = time.perf_counter()
    tok = Tokenizer.train(docs, args.vocab)
    print(
        f"tokenizer: vocab {tok.vocab_size} trained on {len(docs)} documents in {time.perf_counter() - t:.1f} s"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tok_res = bench_tokenisation(docs, tok, args.rounds, Path(tmp))
        load_res = bench_loader(Path(tmp) / "w1", args.rounds)
    print(
        f"\ntokenisation: {tok_res['mb']:.2f} MB, {tok_res['documents']:,} documents, {tok_res['tokens']:,} tokens "
        f"(median of {args.rounds} interleaved rounds)"
    )
    print(f"| {'stage':<26} | {'MB/s':>7} | {'vs raw':>6} |")
    print(f"|{'-' * 28}|{'-' * 9}|{'-' * 8}|")
    for r in tok_res["rows"]:
        print(f"| {r['what']:<26} | {r['mb_per_s']:>7.2f} | {r['vs_raw']:>5.2f}x |")
    print("(vs raw = the faster raw call's time / this one's time; >= 0.8x is the target)")
    print(f"\nloader: batch {load_res['batch']} x seq {load_res['seq_len']}")
    print(f"| {'loader':<26} | {'Mtok/s':>7} | {'vs raw':>6} |")
    print(f"|{'-' * 28}|{'-' * 9}|{'-' * 8}|")
    for r in load_res["rows"]:
        print(f"| {r['what']:<26} | {r['tokens_per_s'] / 1e6:>7.2f} | {r['vs_raw']:>5.2f}x |")
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["tokenisation"] = tok_res
    results["loader"] = load_res
    results["machine"] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
