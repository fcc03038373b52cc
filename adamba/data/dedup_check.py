"""How well does curation deduplicate? Plant exact and near copies (a fraction of the words edited)
of real documents, curate, and count what was caught and which originals were lost. Used by the
acceptance test on real text and by benchmarks/curate.py; works on any corpus.
"""

from __future__ import annotations

import random
import re

from adamba.data.curate import CurateConfig, curate_documents
from adamba.data.sources import Document


def edit_words(text: str, frac: float, rng: random.Random, vocab: list[str]) -> str:
    """Edit `frac` of the words: 60% substituted, 20% deleted, 20% followed by an inserted word."""
    parts = re.split(r"(\s+)", text)
    idx = [i for i in range(0, len(parts), 2) if parts[i]]
    for i in rng.sample(idx, max(1, round(frac * len(idx)))):
        op = rng.random()
        parts[i] = rng.choice(vocab) if op < 0.6 else "" if op < 0.8 else parts[i] + " " + rng.choice(vocab)
    return "".join(parts)


def plant_duplicates(
    docs: list[Document], frac_exact: float, frac_near: float, edit: float = 0.05, seed: int = 0
) -> tuple[list[Document], list[str], list[str]]:
    """Append exact copies and near copies (`edit` of the words changed) of random documents, shuffled,
    after all originals (so the original is the first copy, the one curation keeps)."""
    rng = random.Random(seed)
    vocab = sorted({w for d in docs for w in d.text.split()})
    picks = rng.sample(range(len(docs)), round(len(docs) * (frac_exact + frac_near)))
    n_exact = round(len(docs) * frac_exact)
    extra = [Document(docs[i].text, id=f"exact-of/{docs[i].id}") for i in picks[:n_exact]]
    extra += [
        Document(edit_words(docs[i].text, edit, rng, vocab), id=f"near-of/{docs[i].id}")
        for i in picks[n_exact:]
    ]
    rng.shuffle(extra)
    return (
        docs + extra,
        [d.id for d in extra if d.id.startswith("exact-of/")],
        [d.id for d in extra if d.id.startswith("near-of/")],
    )


def dedup_quality(docs: list[Document], cfg: CurateConfig, workers: int = 1, seed: int = 0) -> dict:
    """Plant 5% exact and 5% near copies, curate, and count what was caught and what was lost."""
    planted, exact_ids, near_ids = plant_duplicates(docs, 0.05, 0.05, seed=seed)
    kept, rep = curate_documents(planted, cfg, workers=workers)
    kept_ids = {d.id for d in kept}
    originals = [d.id for d in docs]
    return {
        "documents": len(docs),
        "planted_exact": len(exact_ids),
        "planted_near": len(near_ids),
        "exact_removed": sum(i not in kept_ids for i in exact_ids) / len(exact_ids),
        "near_detected": sum(i not in kept_ids for i in near_ids) / len(near_ids),
        "false_positive_rate": sum(i not in kept_ids for i in originals) / len(originals),
        "false_positives": [i for i in originals if i not in kept_ids],
        "removed": rep.removed,
        "seconds": rep.seconds,
    }
