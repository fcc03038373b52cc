"""Data pipeline throughput, each stage against its bare peer in the same run.

Tokenisation: `write_shards` (encode + BOS + uint16 packing + sha256 + fsync'd shards and
manifest) with 1 and 2 worker processes, against raw Hugging Face `tokenizers`
`encode_batch` / `encode_batch_fast` on the same documents with the same tokenizer. Timings are
interleaved over rounds so machine noise hits all alike; the median is reported.
Loader: TokenLoader (BOS-aligned windows, mixture sampler, prefetch thread) against bare
numpy slicing of the same memory-mapped shards at random offsets.

Memory (`--memory`): peak RSS of `adamba data tokenizer` and `adamba data shards` on one
document that is a single 50 MB line (WikiText-2 repeated, newlines turned into spaces), each
in a fresh process (os.wait4's ru_maxrss), against the raw `tokenizers` library doing the same
work on the whole line in one call (train_from_iterator / encode_batch_fast: what adamba did
before it cut long texts into pieces), and the bare interpreter with the CLI's imports.

Real text from ../shared/data (Tiny Shakespeare + WikiText-2 valid, split into paragraphs);
the benchmark says so and skips when the folder is absent.

    python benchmarks/data.py [--rounds 3] [--vocab 8192]
    python benchmarks/data.py --memory [--memory-mb 50] [--no-peers]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
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


# The raw library on the whole line in one call: the peers of the two adamba commands.
PEER_TRAIN = """
import sys
from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
from adamba.data.tokenizer import SPECIAL_TOKENS, SPLIT_PATTERN
text = open(sys.argv[1], encoding="utf-8").read()
hf = Tokenizer(models.BPE())
hf.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated"),
                                            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
t = trainers.BpeTrainer(vocab_size=int(sys.argv[2]), special_tokens=SPECIAL_TOKENS,
                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), min_frequency=2)
hf.train_from_iterator([text], t)
"""
PEER_ENCODE = """
import sys
from tokenizers import Tokenizer
text = open(sys.argv[1], encoding="utf-8").read()
ids = Tokenizer.from_file(sys.argv[2]).encode_batch_fast([text], add_special_tokens=False)[0].ids
print(len(ids))
"""


def one_line_file(path: Path, mb: float) -> int:
    """WikiText-2 repeated, newlines turned into spaces, cut to `mb` million characters: one
    document on one line. Returns its size in bytes."""
    text = (SHARED / "wikitext2" / "valid.txt").read_text(encoding="utf-8").replace("\n", " ")
    n = int(mb * 1e6)
    path.write_text((text * (n // len(text) + 1))[:n], encoding="utf-8")
    return path.stat().st_size


# Starts the measured command from a bare interpreter: a child's ru_maxrss counts the memory of
# the process it was forked from (Linux carries the pre-exec high-water mark over), so forking it
# straight from this script would add this script's few hundred MB to every row.
LAUNCH = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(f"{usage.ru_maxrss} {os.waitstatus_to_exitcode(status)}")
"""


def peak_rss(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd` in a fresh process; its peak resident memory (MB), wall seconds and exit code."""
    log, out = cwd / "log.txt", cwd / "rusage.txt"
    t = time.perf_counter()
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-S", "-c", LAUNCH, str(out), *cmd], stdout=f, stderr=f, cwd=cwd)
    seconds = time.perf_counter() - t
    maxrss_kb, rc = (int(v) for v in out.read_text().split())
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if rc else []
    return {"peak_rss_mb": maxrss_kb / 1e3, "seconds": seconds, "rc": rc, "error": tail[0] if tail else ""}


def bench_memory(mb: float, vocab: int, peers: bool, tmp: Path) -> dict:
    one = tmp / "one_line.txt"
    size = one_line_file(one, mb)
    tok = Tokenizer.train(load_docs(), vocab)
    tok_path = tok.save(tmp / "tokenizer.json")
    py, cli = sys.executable, [sys.executable, "-m", "adamba", "data"]
    runs = {
        "interpreter + CLI imports": [*cli, "--help"],
        "adamba data tokenizer": [*cli, "tokenizer", str(one), "--vocab-size", str(vocab)]
        + ["--out", str(tmp / "t.json")],
        "adamba data shards": [
            *cli,
            "shards",
            str(one),
            "--tokenizer",
            str(tok_path),
            "--out",
            str(tmp / "s"),
        ],
    }
    if peers:
        runs["raw tokenizers: train, whole line"] = [py, "-c", PEER_TRAIN, str(one), str(vocab)]
        runs["raw tokenizers: encode, whole line"] = [py, "-c", PEER_ENCODE, str(one), str(tok_path)]
    env_dir = tmp / "cwd"  # not the repository root: `python -m adamba` imports what PYTHONPATH gives
    env_dir.mkdir()
    rows = []
    for name, cmd in runs.items():
        r = peak_rss(cmd, env_dir)
        rows.append({"what": name, **r, "mb_per_s": size / 1e6 / r["seconds"]})
        print(
            f"  {name}: {r['peak_rss_mb']:,.0f} MB peak RSS, {r['seconds']:.1f} s"
            + (f" (rc {r['rc']})" if r["rc"] else "")
        )
    return {"file_mb": size / 1e6, "characters": int(mb * 1e6), "vocab": vocab, "rows": rows}


def print_memory(res: dict) -> None:
    print(
        f"\npeak memory on one {res['file_mb']:.1f} MB line ({res['characters']:,} characters), vocab {res['vocab']}:"
    )
    print(f"| {'process':<36} | {'peak RSS MB':>11} | {'seconds':>7} |")
    print(f"|{'-' * 38}|{'-' * 13}|{'-' * 9}|")
    for r in res["rows"]:
        note = f" (failed: {r['error']})" if r["rc"] else ""
        print(f"| {r['what']:<36} | {r['peak_rss_mb']:>11,.0f} | {r['seconds']:>7.1f} |{note}")


def save(section: dict) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results.update(section)
    results["machine"] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {RESULTS}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--memory", action="store_true", help="peak RSS on one long line instead of speed")
    ap.add_argument("--memory-mb", type=float, default=50.0, help="size of that line, millions of characters")
    ap.add_argument("--no-peers", action="store_true", help="skip the raw-library runs (they need ~7 GB)")
    args = ap.parse_args()
    docs = load_docs()
    if docs is None:
        print(f"skipped: real text not found under {SHARED} ({', '.join(FILES)})")
        return
    if args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            res = bench_memory(args.memory_mb, args.vocab, not args.no_peers, Path(tmp))
        print_memory(res)
        save({"memory": res})
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
    save({"tokenisation": tok_res, "loader": load_res})


if __name__ == "__main__":
    main()
