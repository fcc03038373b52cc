"""MinHash signatures over word shingles and an LSH index over them: near-duplicate detection for
curation (adamba/data/curate.py).

A small vectorised numpy implementation rather than `datasketch`: importing datasketch costs ~2 s
(it pulls in scipy) in every worker process, and hashing shingles one by one in Python is slower
than hashing word ids in numpy (benchmarks/curate.py measures both).
"""

from __future__ import annotations

import re
import zlib

import numpy as np

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
