"""Curation: normalise, deduplicate (exact and near), filter; count every removal.

Per document (in worker processes): Unicode NFC and whitespace normalisation, a content hash,
Gopher-style quality filters and a MinHash signature over word shingles. In the parent, in input
order (so the result does not depend on the number of workers): exact duplicates by hash, then
near duplicates by LSH banding over the signatures, verified by the signatures' agreement. The first
copy seen is kept. Everything removed is counted per named filter, with a few examples, in a
`CurateReport`; `curate` also writes `processed/<run>.jsonl` and `metadata/<run>.json`.

MinHash is a small vectorised numpy implementation rather than `datasketch`: importing datasketch
costs ~2 s (it pulls in scipy) in every worker process, and hashing shingles one by one in Python
is slower than hashing word ids in numpy (benchmarks/curate.py measures both).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing as mp
import os
import re
import time
import unicodedata
import zlib
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from adamba.data.sources import Document, SourceStats
from adamba.errors import AdambaError

# ---------------------------------------------------------------------------------------------
# Config


@dataclass
class CurateConfig:
    """Every knob of curation. A threshold set to None turns its filter off."""

    # normalisation
    nfc: bool = True  # Unicode NFC: one code-point sequence per visible string
    whitespace: bool = True  # CRLF -> LF, odd spaces -> " ", no trailing spaces, <= 1 blank line in a row
    collapse_spaces: bool = True  # runs of spaces inside a line -> one (leading indentation is kept)
    # deduplication
    exact_dedup: bool = True
    near_dedup: bool = True
    shingle_words: int = 3  # MinHash over sets of 3-word shingles (lowercased \w+ words)
    num_perm: int = 128  # MinHash permutations
    lsh_bands: int = 32  # bands of num_perm/lsh_bands rows; more bands find lower similarities
    near_threshold: float = 0.5  # estimated Jaccard >= this (vs a kept document) -> near duplicate
    seed: int = 0
    # Gopher quality rules (Rae et al. 2021, appendix A); None = off
    min_words: int | None = 50
    max_words: int | None = 100_000
    min_mean_word_length: float | None = 3.0
    max_mean_word_length: float | None = 10.0
    max_symbol_word_ratio: float | None = 0.1  # ('#' + ellipses) per word
    max_bullet_lines: float | None = 0.9  # fraction of lines starting with a bullet
    max_ellipsis_lines: float | None = 0.3  # fraction of lines ending with an ellipsis
    min_alpha_words: float | None = 0.8  # fraction of words with at least one letter
    min_stop_words: int | None = 2  # English stop words present (the, be, to, of, and, that, have, with)
    max_dup_line_frac: float | None = 0.3
    max_dup_para_frac: float | None = 0.3
    max_dup_line_char_frac: float | None = 0.2
    max_dup_para_char_frac: float | None = 0.2
    max_top_ngram_char_frac: dict[int, float] | None = field(
        default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16}
    )
    max_dup_ngram_char_frac: dict[int, float] | None = field(
        default_factory=lambda: {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    )
    # code rules (StarCoder-style); off for prose
    max_line_length: int | None = None
    max_mean_line_length: float | None = None
    min_alnum_fraction: float | None = None
    # reporting
    examples_per_filter: int = 3

    @classmethod
    def web(cls) -> CurateConfig:
        """Prose from the web: the defaults (Gopher rules on)."""
        return cls()

    @classmethod
    def for_code(cls) -> CurateConfig:
        """Source code: prose rules off (they would delete most code), code rules on, dedup as usual.

        Spaces inside lines are kept (alignment in code is meaningful), long machine-made lines
        and data blobs go.
        """
        prose_off = {f: None for f in PROSE_FIELDS}
        return cls(
            collapse_spaces=False,
            **prose_off,
            max_line_length=1000,
            max_mean_line_length=100.0,
            min_alnum_fraction=0.25,
        )

    @classmethod
    def dedup_only(cls) -> CurateConfig:
        """Normalise and deduplicate, filter nothing (e.g. measuring the deduplication alone)."""
        return cls(**{f: None for f in PROSE_FIELDS})

    @classmethod
    def preset(cls, name: str) -> CurateConfig:
        presets = {"web": cls.web, "code": cls.for_code, "dedup": cls.dedup_only}
        if name not in presets:
            raise AdambaError(f"unknown curation preset {name!r}; choose one of {', '.join(presets)}")
        return presets[name]()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check(self) -> None:
        if self.shingle_words < 1:
            raise AdambaError(f"curate shingle_words={self.shingle_words}: must be >= 1")
        if self.num_perm < 1 or self.lsh_bands < 1 or self.num_perm % self.lsh_bands:
            raise AdambaError(
                f"curate num_perm={self.num_perm}, lsh_bands={self.lsh_bands}: bands must divide num_perm"
            )
        if not 0 < self.near_threshold <= 1:
            raise AdambaError(f"curate near_threshold={self.near_threshold}: must be in (0, 1]")


PROSE_FIELDS = [
    "min_words",
    "max_words",
    "min_mean_word_length",
    "max_mean_word_length",
    "max_symbol_word_ratio",
    "max_bullet_lines",
    "max_ellipsis_lines",
    "min_alpha_words",
    "min_stop_words",
    "max_dup_line_frac",
    "max_dup_para_frac",
    "max_dup_line_char_frac",
    "max_dup_para_char_frac",
    "max_top_ngram_char_frac",
    "max_dup_ngram_char_frac",
]

# ---------------------------------------------------------------------------------------------
# Normalisation

_ODD_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000\f\v]")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f]")  # C0 controls except \t \n \r, and DEL
_TRAILING = re.compile(r"[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n{3,}")
_INNER_SPACES = re.compile(r"(?<=\S)[ \t]{2,}(?=\S)")


def normalize(text: str, cfg: CurateConfig) -> str:
    if cfg.nfc:
        text = unicodedata.normalize("NFC", text)
    if cfg.whitespace:
        # each substitution is guarded by a cheap substring test: most text needs none of them
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _CONTROL.sub("", _ODD_SPACES.sub(" ", text))
        text = text.replace("\ufeff", "").replace("\u200b", "")
        if cfg.collapse_spaces and ("  " in text or "\t" in text):
            text = _INNER_SPACES.sub(" ", text)
        if " \n" in text or "\t\n" in text:
            text = _TRAILING.sub("", text)
        if "\n\n\n" in text:
            text = _BLANK_RUNS.sub("\n\n", text)
        text = text.strip("\n").rstrip(" \t")
    return text


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=16).digest()


# ---------------------------------------------------------------------------------------------
# MinHash


_WORD = re.compile(r"\w+")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads combined word hashes over all 64 bits."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class MinHasher:
    """MinHash signatures of word-shingle sets, vectorised over shingles and permutations.

    Words (lowercased \\w+) are hashed with crc32, k consecutive word hashes are combined and mixed
    into one 32-bit shingle key, and each of `num_perm` hash functions is the multiply-shift family
    h(x) = ((a*x + b) mod 2^64) >> 32 with random 64-bit a, b: a 2-universal family for 32-bit keys,
    computed with plain uint64 overflow arithmetic. The signature is the per-function minimum.
    """

    def __init__(self, num_perm: int = 128, shingle_words: int = 3, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.k = shingle_words
        self.a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.mult = np.uint64(0x9E3779B97F4A7C15)

    def shingles(self, text: str) -> np.ndarray:
        """32-bit keys of the word shingles (one shingle of all words if there are fewer than k)."""
        words = _WORD.findall(text.lower())
        if not words:
            return np.zeros(0, dtype=np.uint64)
        wh = np.fromiter((zlib.crc32(w.encode()) for w in words), dtype=np.uint64, count=len(words))
        k = min(self.k, len(wh))
        n = len(wh) - k + 1
        h = wh[:n].copy()
        with np.errstate(over="ignore"):
            for j in range(1, k):
                h = h * self.mult + wh[j : j + n]
            return _mix64(h) >> np.uint64(32)

    def signature(self, text: str, block: int = 512) -> np.ndarray | None:
        """uint32[num_perm], or None for text without words."""
        keys = self.shingles(text)
        if not len(keys):
            return None
        sig = np.full(len(self.a), np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for i in range(0, len(keys), block):
                x = keys[i : i + block, None]
                np.minimum(sig, ((self.a * x + self.b) >> np.uint64(32)).min(axis=0), out=sig)
        return sig.astype(np.uint32)


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


class LSHIndex:
    """Banded LSH over MinHash signatures: documents sharing one band are candidates, then verified.

    Signatures travel as bytes (uint32 little-endian): cheap to pickle from the workers, and a band
    key is just a slice.
    """

    def __init__(self, num_perm: int, bands: int, threshold: float):
        self.width, self.bands, self.threshold = 4 * (num_perm // bands), bands, threshold
        self.tables: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self.sigs: list[bytes] = []
        self.ids: list[str] = []

    def _keys(self, sig: bytes) -> list[bytes]:
        w = self.width
        return [sig[i * w : (i + 1) * w] for i in range(self.bands)]

    def match(self, sig: bytes) -> tuple[str, float] | None:
        """(id, similarity) of the most similar indexed document at or above the threshold, if any."""
        best, seen = None, set()
        mine = np.frombuffer(sig, dtype=np.uint32)
        for table, key in zip(self.tables, self._keys(sig)):
            for j in table.get(key, ()):
                if j in seen:
                    continue
                seen.add(j)
                s = estimated_jaccard(mine, np.frombuffer(self.sigs[j], dtype=np.uint32))
                if s >= self.threshold and (best is None or s > best[1]):
                    best = (self.ids[j], s)
        return best

    def add(self, sig: bytes, doc_id: str) -> None:
        j = len(self.sigs)
        self.sigs.append(sig)
        self.ids.append(doc_id)
        for table, key in zip(self.tables, self._keys(sig)):
            table.setdefault(key, []).append(j)


# ---------------------------------------------------------------------------------------------
# Quality filters. Each takes the document's `TextView` and the config and returns None (keep)
# or a short reason; FILTERS lists them by name in the order they run (cheap first).

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


# ---------------------------------------------------------------------------------------------
# Per-document work (runs in worker processes)


@dataclass
class _Result:
    doc: Document  # with normalised text
    line: bytes  # its processed JSONL line (serialised here, so the parent loop stays light)
    digest: bytes  # content hash of the normalised text (exact dedup)
    raw_digest: bytes  # hash of the input id and text (the run's input hash folds these in order)
    reject: tuple[str, str] | None  # (filter, detail)
    sig: bytes | None  # MinHash signature, uint32 little-endian
    chars_in: int
    chars_out: int


EXAMPLE_CHARS = 300  # text kept per removed-document example
_WORKER: tuple[CurateConfig, MinHasher, bool] | None = None


def _init_worker(cfg: CurateConfig, keep_text: bool = True) -> None:
    global _WORKER
    _WORKER = (cfg, MinHasher(cfg.num_perm, cfg.shingle_words, cfg.seed), keep_text)


def _jsonl_line(doc: Document) -> bytes:
    rec = {"id": doc.id, "source": doc.source, "text": doc.text}
    if doc.meta:
        rec["meta"] = doc.meta
    return (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8", errors="surrogatepass")


def _process(doc: Document) -> _Result:
    assert _WORKER is not None
    cfg, hasher, keep_text = _WORKER
    raw = content_hash(f"{len(doc.id)}:{doc.id}{doc.text}")
    text = normalize(doc.text, cfg)
    out = dataclasses.replace(doc, text=text)
    if not text.strip():
        return _Result(out, b"", b"", raw, ("empty", "no text after normalisation"), None, len(doc.text), 0)
    reject = quality_reason(text, cfg)
    sig = hasher.signature(text) if cfg.near_dedup and reject is None else None
    line = _jsonl_line(out) if reject is None else b""
    if not keep_text:  # writing a file: the line carries the text; examples need only a prefix
        out.text = text[:EXAMPLE_CHARS]
    sig_bytes = None if sig is None else sig.tobytes()
    return _Result(out, line, content_hash(text), raw, reject, sig_bytes, len(doc.text), len(text))


def _results(docs: Iterable[Document], cfg: CurateConfig, workers: int, keep_text: bool) -> Iterator[_Result]:
    """Process documents in input order, inline or over a process pool, reading the input in windows
    so memory stays bounded however long the stream is."""
    if workers <= 1:
        _init_worker(cfg, keep_text)
        yield from map(_process, docs)
        return
    chunk = 16
    window = workers * chunk * 16
    # spawn, not fork: the parent may run threads (progress bar, torch) that fork would copy mid-lock.
    # An executor, not mp.Pool: a worker that dies raises BrokenProcessPool instead of hanging.
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(cfg, keep_text)
    ) as ex:
        it, ahead = iter(docs), None
        while batch := list(islice(it, window)):
            submitted = ex.map(_process, batch, chunksize=chunk)  # queued now: workers never wait on us
            if ahead is not None:
                yield from ahead
            ahead = submitted
        if ahead is not None:
            yield from ahead


# ---------------------------------------------------------------------------------------------
# Report and drivers


@dataclass
class CurateReport:
    run: str = ""
    docs_in: int = 0
    docs_out: int = 0
    chars_in: int = 0
    chars_out: int = 0
    removed: dict[str, int] = field(
        default_factory=dict
    )  # filter name / exact_dup / near_dup / empty -> count
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    input_hash: str = ""  # sha256 over the raw input documents (a hash of each id and text, in order)
    output_hash: str = ""  # sha256 of the processed JSONL (same value in memory and on disk)
    inputs: list[dict[str, Any]] = field(default_factory=list)  # what was read: paths + file hashes, datasets
    sources: dict[str, Any] = field(default_factory=dict)  # reader counters (binary, malformed ... skipped)
    config: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    seconds: float = 0.0
    output_path: str = ""
    metadata_path: str = ""

    @property
    def docs_per_s(self) -> float:
        return self.docs_in / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "docs_per_s": self.docs_per_s}

    def summary(self) -> str:
        rem = ", ".join(f"{k} {v}" for k, v in sorted(self.removed.items(), key=lambda kv: -kv[1]))
        return (
            f"{self.docs_in} documents in, {self.docs_out} kept ({self.chars_out / max(1, self.chars_in):.0%} of characters)"
            + (f"; removed: {rem}" if rem else "")
            + f"; {self.seconds:.1f} s, {self.docs_per_s:,.0f} docs/s with {self.workers} worker(s)"
        )


def _run_curation(
    docs: Iterable[Document],
    cfg: CurateConfig,
    workers: int,
    progress: bool,
    report: CurateReport,
    keep_text: bool = True,
) -> Iterator[tuple[Document, bytes]]:
    """The parent loop: hash inputs, apply the per-document verdicts and both dedups, count everything."""
    cfg.check()
    t0 = time.perf_counter()
    report.config, report.workers = cfg.to_dict(), max(1, workers)
    in_hash, out_hash = hashlib.sha256(), hashlib.sha256()
    seen: set[bytes] = set()
    lsh = LSHIndex(cfg.num_perm, cfg.lsh_bands, cfg.near_threshold) if cfg.near_dedup else None

    def drop(name: str, doc: Document, detail: str) -> None:
        report.removed[name] = report.removed.get(name, 0) + 1
        ex = report.examples.setdefault(name, [])
        if len(ex) < cfg.examples_per_filter:
            ex.append({"id": doc.id, "source": doc.source, "why": detail, "text": doc.text[:EXAMPLE_CHARS]})

    bar = _progress_bar() if progress else None
    try:
        task = bar.add_task("curate", total=None, kept=0) if bar else None
        for r in _results(docs, cfg, workers, keep_text):
            in_hash.update(r.raw_digest)
            report.docs_in += 1
            report.chars_in += r.chars_in
            if bar is not None and report.docs_in % 256 == 0:
                bar.update(task, completed=report.docs_in, kept=report.docs_out)
            if r.reject and r.reject[0] == "empty":
                drop("empty", r.doc, r.reject[1])
                continue
            if cfg.exact_dedup:
                if r.digest in seen:
                    drop("exact_dup", r.doc, "same normalised text as an earlier document")
                    continue
                seen.add(r.digest)
            if r.reject:
                drop(r.reject[0], r.doc, r.reject[1])
                continue
            if lsh is not None and r.sig is not None:
                if m := lsh.match(r.sig):
                    drop("near_dup", r.doc, f"~{m[1]:.2f} Jaccard with kept document {m[0]!r}")
                    continue
                lsh.add(r.sig, r.doc.id)
            report.docs_out += 1
            report.chars_out += r.chars_out
            out_hash.update(r.line)
            yield r.doc, r.line
    finally:
        if bar is not None:
            bar.update(task, completed=report.docs_in, kept=report.docs_out)
            bar.stop()
        report.input_hash, report.output_hash = in_hash.hexdigest(), out_hash.hexdigest()
        report.seconds = time.perf_counter() - t0


def _progress_bar():
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    bar = Progress(
        SpinnerColumn(),
        TextColumn("curating: {task.completed:,} documents read, {task.fields[kept]:,} kept"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    bar.start()
    return bar


def curate_documents(
    docs: Iterable[Document],
    config: CurateConfig | None = None,
    workers: int = 1,
    progress: bool = False,
) -> tuple[list[Document], CurateReport]:
    """Curate in memory: (kept documents in input order, report). Same code path as `curate`."""
    report = CurateReport(run="in-memory")
    kept = [doc for doc, _ in _run_curation(docs, config or CurateConfig(), workers, progress, report)]
    return kept, report


def curate(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    config: CurateConfig | None = None,
    workers: int = 1,
    run: str | None = None,
    text_field: str = "text",
    paragraphs: bool = False,
    progress: bool = False,
    chunk_words: int = 0,
) -> CurateReport:
    """Curate files, folders or registry datasets into `out_dir/processed/<run>.jsonl` plus
    `out_dir/metadata/<run>.json` (every count, examples, config, input and output hashes).

    Each input is a path (text, JSONL, Parquet, or a folder of them), a registry name such as
    `gsm8k`, or `hf:owner/name[:config]`; text files are split by `paragraphs` / `chunk_words` as in
    `sources.text_documents`. The default run name hashes the inputs and settings, so the same
    command writes the same files.
    """
    from adamba.data.registry import describe_input, open_input

    if not inputs:
        raise AdambaError("curate needs at least one input (a file, a folder or a dataset name)")
    cfg = config or CurateConfig()
    out_dir = Path(out_dir)
    stats = SourceStats()
    descs = [describe_input(str(s)) for s in inputs]  # also fails early on a missing path
    run = (
        run
        or "curate-"
        + hashlib.sha256(
            json.dumps(
                [descs, cfg.to_dict(), text_field, paragraphs, chunk_words], sort_keys=True, default=str
            ).encode()
        ).hexdigest()[:8]
    )
    if not re.fullmatch(r"[\w.-]+", run):
        raise AdambaError(f"run name {run!r}: use letters, digits, '.', '-' and '_' only")

    def docs() -> Iterator[Document]:
        for s in inputs:
            yield from open_input(str(s), text_field, paragraphs, stats, chunk_words)

    report = CurateReport(run=run, inputs=descs)
    proc = out_dir / "processed" / f"{run}.jsonl"
    meta = out_dir / "metadata" / f"{run}.json"
    proc.parent.mkdir(parents=True, exist_ok=True)
    meta.parent.mkdir(parents=True, exist_ok=True)
    tmp = proc.with_name(proc.name + f".tmp{os.getpid()}")
    file_hash = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for _, line in _run_curation(docs(), cfg, workers, progress, report, keep_text=False):
                file_hash.update(line)
                f.write(line)
        os.replace(tmp, proc)
    finally:
        tmp.unlink(missing_ok=True)
    assert file_hash.hexdigest() == report.output_hash
    report.sources = stats.to_dict()
    report.output_path, report.metadata_path = str(proc), str(meta)
    tmp_meta = meta.with_name(meta.name + f".tmp{os.getpid()}")
    tmp_meta.write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False, default=str))
    os.replace(tmp_meta, meta)
    return report


def read_processed(path: str | Path) -> Iterator[Document]:
    """Documents back from a `processed/<run>.jsonl` file."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            yield Document(rec["text"], rec.get("id", ""), rec.get("source", ""), rec.get("meta", {}))
