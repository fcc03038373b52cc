"""Curation throughput (docs/s, MB/s) with 1 and 2 worker processes, and near-dedup quality, on real
text: Tiny Shakespeare (~300-word chunks), WikiText-2 valid articles and all GSM8K records from
../shared/data, with 5% exact and 5% near copies (5% of words edited) planted.

Peer, in the same run: `datasketch` MinHash signatures (update_batch over the same 3-word
shingles, 128 permutations) against adamba's numpy MinHasher, plus datasketch's import time,
which every spawned worker would pay. Timings are interleaved and repeated (median reported)
because this machine is shared.

    python benchmarks/curate.py [--repeats 3] [--out benchmarks/results/curate.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from adamba.data.curate import CurateConfig, curate_documents, normalize
from adamba.data.dedup_check import dedup_quality, plant_duplicates
from adamba.data.minhash import MinHasher
from adamba.data.sources import Document

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


# ---- the real text (the same corpus as tests/data/test_curate.py's acceptance test, which keeps
# its own copy: a benchmark does not import tests); planted copies from adamba.data.dedup_check


def real_documents(root: Path, gsm8k_limit: int | None = None) -> list[Document]:
    """Tiny Shakespeare in ~300-word chunks (at blank lines), WikiText-2 valid articles, GSM8K records."""
    docs: list[Document] = []
    cur, n = [], 0
    for line in (root / "tinyshakespeare" / "input.txt").read_text().split("\n"):
        cur.append(line)
        n += len(line.split())
        if n >= 300 and not line.strip():
            docs.append(
                Document("\n".join(cur).strip(), id=f"shakespeare/{len(docs)}", source="tinyshakespeare")
            )
            cur, n = [], 0
    wiki = re.split(r"\n (= [^=].*? =) \n", "\n" + (root / "wikitext2" / "valid.txt").read_text())
    for i in range(1, len(wiki), 2):
        docs.append(
            Document((wiki[i] + "\n" + wiki[i + 1]).strip(), id=f"wikitext/{i // 2}", source="wikitext2")
        )
    with open(root / "gsm8k" / "train.jsonl") as f:
        for i, line in enumerate(f):
            if gsm8k_limit is not None and i >= gsm8k_limit:
                break
            r = json.loads(line)
            docs.append(Document(r["question"] + "\n" + r["answer"], id=f"gsm8k/{i}", source="gsm8k"))
    return docs


def datasketch_signatures(texts: list[str], k: int = 3, num_perm: int = 128) -> float:
    """Seconds for datasketch to sign every text (same lowercased \\w+ word shingles as ours)."""
    import re

    from datasketch import MinHash

    word = re.compile(r"\w+")
    t = time.perf_counter()
    for text in texts:
        w = word.findall(text.lower())
        sh = {" ".join(w[i : i + k]).encode() for i in range(max(1, len(w) - k + 1))}
        m = MinHash(num_perm=num_perm)
        m.update_batch(list(sh))
    return time.perf_counter() - t


def ours_signatures(texts: list[str]) -> float:
    h = MinHasher(128, 3)
    t = time.perf_counter()
    for text in texts:
        h.signature(text)
    return time.perf_counter() - t


def import_seconds(module: str) -> float:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    return float(
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    )


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the curation workers)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "curate.json"))
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"needs the real text in {SHARED}")

    docs = real_documents(SHARED)
    corpus, _, _ = plant_duplicates(docs, 0.05, 0.05, seed=0)
    mb = sum(len(d.text.encode()) for d in corpus) / 1e6
    print(f"corpus: {len(corpus)} documents ({len(docs)} real + planted copies), {mb:.2f} MB")

    # throughput: presets x workers, interleaved, median of repeats
    runs = [(p, w) for p in ("dedup", "web") for w in (1, 2)]
    secs: dict[tuple[str, int], list[float]] = {r: [] for r in runs}
    cpu: dict[tuple[str, int], list[float]] = {r: [] for r in runs}
    kept: dict[tuple[str, int], str] = {}
    for _ in range(args.repeats):
        for preset, workers in runs:
            c0 = cpu_seconds()
            out, rep = curate_documents(corpus, CurateConfig.preset(preset), workers=workers)
            cpu[(preset, workers)].append(cpu_seconds() - c0)
            secs[(preset, workers)].append(rep.seconds)
            kept[(preset, workers)] = f"{len(out)} kept, output {rep.output_hash[:12]}"
    rows = []
    for preset, workers in runs:
        s = statistics.median(secs[(preset, workers)])
        base = statistics.median(secs[(preset, 1)])
        rows.append(
            {
                "preset": preset,
                "workers": workers,
                "seconds": s,
                "docs_per_s": len(corpus) / s,
                "mb_per_s": mb / s,
                "speedup_vs_1_worker": base / s,
                "cpu_seconds": statistics.median(cpu[(preset, workers)]),  # parent + workers, incl. start-up
                "all_seconds": secs[(preset, workers)],
                "result": kept[(preset, workers)],
            }
        )

    # MinHash peer: signatures only, same normalised texts
    texts = [normalize(d.text, CurateConfig()) for d in corpus]
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(ours_signatures(texts))
        theirs.append(datasketch_signatures(texts))
    minhash = {
        "adamba_numpy_s": statistics.median(ours),
        "datasketch_s": statistics.median(theirs),
        "datasketch_over_adamba": statistics.median(theirs) / statistics.median(ours),
        "import_s": {
            "datasketch": import_seconds("datasketch"),
            "adamba.data.curate": import_seconds("adamba.data.curate"),
        },
    }

    quality = dedup_quality(docs, CurateConfig.dedup_only())
    quality.pop("seconds")

    print(
        f"\n{'preset':<8} {'workers':>7} {'seconds':>8} {'docs/s':>9} {'MB/s':>6} {'x 1 worker':>10} {'CPU s':>6}"
    )
    for r in rows:
        print(
            f"{r['preset']:<8} {r['workers']:>7} {r['seconds']:>8.2f} {r['docs_per_s']:>9,.0f} "
            f"{r['mb_per_s']:>6.2f} {r['speedup_vs_1_worker']:>10.2f} {r['cpu_seconds']:>6.2f}"
        )
    print(f"load average during the run: {_load()}")
    print(
        f"\nMinHash signatures of all {len(texts)} documents: adamba numpy {minhash['adamba_numpy_s']:.2f} s, "
        f"datasketch {minhash['datasketch_s']:.2f} s ({minhash['datasketch_over_adamba']:.1f}x); "
        f"import datasketch {minhash['import_s']['datasketch']:.2f} s vs adamba.data.curate "
        f"{minhash['import_s']['adamba.data.curate']:.2f} s"
    )
    print(
        f"near dedup on {quality['documents']} real documents: exact copies removed {quality['exact_removed']:.1%}, "
        f"near copies detected {quality['near_detected']:.1%} ({quality['planted_near']}), "
        f"false positives {quality['false_positive_rate']:.3%} {quality['false_positives']}"
    )
    result = {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": _cpus(),
            "load_average_after": _load(),
        },
        "corpus": {"documents": len(corpus), "real_documents": len(docs), "mb": mb},
        "throughput": rows,
        "minhash": minhash,
        "dedup_quality": quality,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"-> {args.out}")


def _load() -> str:
    import os

    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__":
    main()
