"""Gopher-style quality filters for curation (adamba/data/curate.py). Each takes the document's
`TextView` (words, lines, paragraphs, computed once and shared) and the config and returns None
(keep) or a short reason; FILTERS lists them by name in the order they run (cheap first). A
filter whose threshold is None in the config is off (the code preset turns the prose filters off).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from adamba.data.curate import CurateConfig

_NOT_ALNUM = re.compile(r"[\W_]+")
STOP_WORDS = frozenset(["the", "be", "to", "of", "and", "that", "have", "with"])
BULLETS = ("-", "*", "•", "‣", "●", "◦", "▪", "·", "–")
ELLIPSES = ("...", "…")


class TextView:
    """Words, lines and paragraphs of one document, computed once and shared by the filters."""

    def __init__(self, text: str):
        self.text = text
        self.words = text.split()
        self.lines = text.split("\n")
        self._ids: np.ndarray | None = None
        self._lens: np.ndarray | None = None
        self._ngrams: dict[int, np.ndarray] = {}

    def word_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """Integer id per word (equal words, equal ids) and word lengths, for n-gram statistics."""
        if self._ids is None:
            vocab: dict[str, int] = {}
            self._ids = np.fromiter((vocab.setdefault(w, len(vocab)) for w in self.words), dtype=np.uint64)
            self._lens = np.fromiter((len(w) for w in self.words), dtype=np.int64)
        return self._ids, self._lens  # type: ignore[return-value]

    def ngram_hashes(self, n: int) -> np.ndarray:
        """One uint64 hash per word n-gram (position i covers words i..i+n-1), built from the (n-1)-grams."""
        if n not in self._ngrams:
            ids = self.word_ids()[0]
            if n == 1:
                self._ngrams[1] = ids + np.uint64(1)
            else:
                prev = self.ngram_hashes(n - 1)
                with np.errstate(over="ignore"):
                    self._ngrams[n] = prev[:-1] * np.uint64(1_000_003) + ids[n - 1 :] + np.uint64(1)
        return self._ngrams[n]


def _f_min_words(v: TextView, c: CurateConfig) -> str | None:
    if c.min_words is not None and len(v.words) < c.min_words:
        return f"{len(v.words)} words < {c.min_words}"
    return None


def _f_max_words(v: TextView, c: CurateConfig) -> str | None:
    if c.max_words is not None and len(v.words) > c.max_words:
        return f"{len(v.words)} words > {c.max_words}"
    return None


def _f_mean_word_length(v: TextView, c: CurateConfig) -> str | None:
    if (c.min_mean_word_length is None and c.max_mean_word_length is None) or not v.words:
        return None
    m = sum(map(len, v.words)) / len(v.words)
    if c.min_mean_word_length is not None and m < c.min_mean_word_length:
        return f"mean word length {m:.2f} < {c.min_mean_word_length}"
    if c.max_mean_word_length is not None and m > c.max_mean_word_length:
        return f"mean word length {m:.2f} > {c.max_mean_word_length}"
    return None


def _f_symbol_ratio(v: TextView, c: CurateConfig) -> str | None:
    if c.max_symbol_word_ratio is None or not v.words:
        return None
    n = v.text.count("#") + v.text.count("...") + v.text.count("…")
    r = n / len(v.words)
    return f"symbol/word ratio {r:.3f} > {c.max_symbol_word_ratio}" if r > c.max_symbol_word_ratio else None


def _line_frac(v: TextView, pred) -> float:
    lines = [ln for ln in v.lines if ln.strip()]
    return sum(map(pred, lines)) / len(lines) if lines else 0.0


def _f_bullet_lines(v: TextView, c: CurateConfig) -> str | None:
    if c.max_bullet_lines is None:
        return None
    r = _line_frac(v, lambda ln: ln.lstrip().startswith(BULLETS))
    return f"bullet lines {r:.2f} > {c.max_bullet_lines}" if r > c.max_bullet_lines else None


def _f_ellipsis_lines(v: TextView, c: CurateConfig) -> str | None:
    if c.max_ellipsis_lines is None:
        return None
    r = _line_frac(v, lambda ln: ln.rstrip().endswith(ELLIPSES))
    return f"ellipsis lines {r:.2f} > {c.max_ellipsis_lines}" if r > c.max_ellipsis_lines else None


def _f_alpha_words(v: TextView, c: CurateConfig) -> str | None:
    if c.min_alpha_words is None or not v.words:
        return None
    r = sum(1 for w in v.words if w.isalpha() or any(ch.isalpha() for ch in w)) / len(v.words)
    return f"alphabetic words {r:.2f} < {c.min_alpha_words}" if r < c.min_alpha_words else None


def _f_stop_words(v: TextView, c: CurateConfig) -> str | None:
    if c.min_stop_words is None:
        return None
    n = len(STOP_WORDS.intersection(v.text.lower().split()))
    return f"{n} stop words < {c.min_stop_words}" if n < c.min_stop_words else None


def _dup_fracs(items: list[str]) -> tuple[float, float]:
    """(fraction of items that repeat an earlier one, fraction of characters in those repeats)."""
    items = [x for x in items if x.strip()]
    if not items:
        return 0.0, 0.0
    seen: set[str] = set()
    n_dup = c_dup = 0
    for x in items:
        if x in seen:
            n_dup, c_dup = n_dup + 1, c_dup + len(x)
        seen.add(x)
    return n_dup / len(items), c_dup / max(1, sum(map(len, items)))


def _f_dup_lines(v: TextView, c: CurateConfig) -> str | None:
    if c.max_dup_line_frac is None and c.max_dup_line_char_frac is None:
        return None
    frac, chars = _dup_fracs(v.lines)
    if c.max_dup_line_frac is not None and frac > c.max_dup_line_frac:
        return f"duplicate lines {frac:.2f} > {c.max_dup_line_frac}"
    if c.max_dup_line_char_frac is not None and chars > c.max_dup_line_char_frac:
        return f"characters in duplicate lines {chars:.2f} > {c.max_dup_line_char_frac}"
    return None


def _f_dup_paragraphs(v: TextView, c: CurateConfig) -> str | None:
    if c.max_dup_para_frac is None and c.max_dup_para_char_frac is None:
        return None
    frac, chars = _dup_fracs(re.split(r"\n\s*\n", v.text))
    if c.max_dup_para_frac is not None and frac > c.max_dup_para_frac:
        return f"duplicate paragraphs {frac:.2f} > {c.max_dup_para_frac}"
    if c.max_dup_para_char_frac is not None and chars > c.max_dup_para_char_frac:
        return f"characters in duplicate paragraphs {chars:.2f} > {c.max_dup_para_char_frac}"
    return None


def _f_top_ngram(v: TextView, c: CurateConfig) -> str | None:
    """Characters covered by the single most frequent n-gram (n = 2..4), as a fraction of all word characters."""
    if not c.max_top_ngram_char_frac:
        return None
    ids, lens = v.word_ids()
    total = lens.sum()
    for n, limit in sorted(c.max_top_ngram_char_frac.items()):
        if len(ids) < n or not total:
            continue
        _, first, counts = np.unique(v.ngram_hashes(n), return_index=True, return_counts=True)
        top = int(np.argmax(counts))
        if counts[top] < 2:
            continue
        i = first[top]
        frac = counts[top] * lens[i : i + n].sum() / total
        if frac > limit:
            return f"top {n}-gram covers {frac:.2f} > {limit}"
    return None


def _f_dup_ngram(v: TextView, c: CurateConfig) -> str | None:
    """Characters inside n-grams (n = 5..10) that occur more than once, as a fraction of word characters."""
    if not c.max_dup_ngram_char_frac:
        return None
    ids, lens = v.word_ids()
    total = lens.sum()
    for n, limit in sorted(c.max_dup_ngram_char_frac.items()):
        if len(ids) < n or not total:
            continue
        _, inv, counts = np.unique(v.ngram_hashes(n), return_inverse=True, return_counts=True)
        dup = (counts[inv] > 1).astype(np.int64)
        covered = np.convolve(dup, np.ones(n, dtype=np.int64))[: len(ids)] > 0
        frac = lens[covered].sum() / total
        if frac > limit:
            return f"duplicate {n}-grams cover {frac:.2f} > {limit}"
    return None


def _f_max_line_length(v: TextView, c: CurateConfig) -> str | None:
    if c.max_line_length is None:
        return None
    m = max(map(len, v.lines))
    return f"a line of {m} characters > {c.max_line_length}" if m > c.max_line_length else None


def _f_mean_line_length(v: TextView, c: CurateConfig) -> str | None:
    if c.max_mean_line_length is None:
        return None
    m = len(v.text) / len(v.lines)
    return f"mean line length {m:.0f} > {c.max_mean_line_length}" if m > c.max_mean_line_length else None


def _f_alnum_fraction(v: TextView, c: CurateConfig) -> str | None:
    if c.min_alnum_fraction is None or not v.text:
        return None
    r = len(_NOT_ALNUM.sub("", v.text)) / len(v.text)
    return f"alphanumeric fraction {r:.2f} < {c.min_alnum_fraction}" if r < c.min_alnum_fraction else None


FILTERS = {
    "min_words": _f_min_words,
    "max_words": _f_max_words,
    "mean_word_length": _f_mean_word_length,
    "symbol_ratio": _f_symbol_ratio,
    "bullet_lines": _f_bullet_lines,
    "ellipsis_lines": _f_ellipsis_lines,
    "alpha_words": _f_alpha_words,
    "stop_words": _f_stop_words,
    "max_line_length": _f_max_line_length,
    "mean_line_length": _f_mean_line_length,
    "alnum_fraction": _f_alnum_fraction,
    "dup_lines": _f_dup_lines,
    "dup_paragraphs": _f_dup_paragraphs,
    "top_ngram": _f_top_ngram,
    "dup_ngram": _f_dup_ngram,
}


def quality_reason(text: str, cfg: CurateConfig) -> tuple[str, str] | None:
    """(filter name, detail) of the first filter that rejects `text`, or None to keep it."""
    view = TextView(text)
    for name, fn in FILTERS.items():
        if (why := fn(view, cfg)) is not None:
            return name, why
    return None
