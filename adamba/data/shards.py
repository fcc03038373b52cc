"""Fixed-size binary token shards plus a `manifest.jsonl` that proves what is in them.

Layout of an output folder:
    manifest.jsonl                one JSON line per shard (see `ShardInfo`)
    shard_00000_<sha8>.bin        raw little-endian uint16 (vocab <= 65536) or uint32 tokens

Every document is preceded by BOS, documents run on across shard boundaries and every shard
but the last holds exactly `shard_tokens` tokens. Writing is crash-safe: shards go to temp
files renamed into place, their names carry a hash prefix so they never overwrite the shards
an older manifest points at, and the manifest itself is renamed in last. Stale shards of an
older manifest are deleted only after the new manifest is in place.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from adamba.data.sources import read_text_file
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError

MANIFEST = "manifest.jsonl"
SHARD_RE = re.compile(r"shard_\d{5,}_[0-9a-f]{8}\.bin")
HASH_CHUNK = 1 << 24  # bytes per read when re-hashing a shard


@dataclass
class ShardInfo:
    """One manifest line. `path` is stored relative to the manifest, resolved when read."""

    path: Path
    dtype: str  # "uint16" or "uint32"
    tokens: int
    docs: int  # documents that start (have their BOS) in this shard
    sha256: str
    source: str  # provenance label given to write_shards (or the documents' common source)
    tokenizer: str  # fingerprint of the tokenizer that made the tokens
    bos: int = 0  # id that marks a document start (the loader aligns sequences on it)
    # SFT data: a parallel file of one uint8 per token, 1 where training predicts the token (the
    # assistant's own); "" for plain text, where every token is a target
    mask: str = ""
    mask_sha256: str = ""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id."""
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def _as_text(doc) -> tuple[str, str]:
    if isinstance(doc, str):
        return doc, ""
    return doc.text, getattr(doc, "source", "") or ""


def _batches(
    docs: Iterable, max_chars: int = 1 << 20, max_docs: int = 1024
) -> Iterator[list[tuple[str, str]]]:
    """Group documents so encode_batch gets enough work to run in parallel."""
    batch, chars = [], 0
    for d in docs:
        text, src = _as_text(d)
        if not text:
            continue
        batch.append((text, src))
        chars += len(text)
        if chars >= max_chars or len(batch) >= max_docs:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _label(sources: set[str]) -> str:
    names = sorted(sources)
    return ",".join(names) if len(names) <= 3 else ",".join(names[:3]) + f",+{len(names) - 3} more"


class _ShardWriter:
    """Accumulates token arrays and writes fixed-size shards, hashing as it goes."""

    def __init__(
        self,
        out_dir: Path,
        dtype: np.dtype,
        shard_tokens: int,
        source: str,
        fp: str,
        bos: int,
        masked: bool = False,
    ):
        self.out_dir, self.dtype, self.shard_tokens = out_dir, dtype, shard_tokens
        self.source, self.fp, self.bos = source, fp, bos
        self.masked = masked  # every add() brings a loss mask, written beside each shard
        self.pending_mask: list[np.ndarray] = []
        self.pending: list[np.ndarray] = []
        self.n_pending = 0
        self.flushed = 0  # tokens already written
        self.docs: list[tuple[int, str]] = []  # (end position, source) of pending documents
        self.lines: list[dict] = []
        self.written: list[Path] = []

    def add(
        self, ids: np.ndarray, doc_ends: list[int], doc_sources: list[str], mask: np.ndarray | None = None
    ) -> None:
        """`ids` holds whole documents; doc_ends are their end offsets within `ids`; `mask`
        (masked writers only) one 0/1 per id."""
        base = self.flushed + self.n_pending
        self.docs.extend((base + e, s) for e, s in zip(doc_ends, doc_sources))
        if self.masked:
            self.pending_mask.append(np.asarray(mask, dtype=np.uint8))
        self.pending.append(ids)
        self.n_pending += len(ids)
        while self.n_pending >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        buf = np.concatenate(self.pending) if len(self.pending) > 1 else self.pending[0]
        chunk, rest = buf[:n], buf[n:]
        self.pending = [rest] if len(rest) else []
        self.n_pending = len(rest)
        data = np.ascontiguousarray(chunk, dtype=self.dtype).tobytes()
        digest = hashlib.sha256(data).hexdigest()
        name = f"shard_{len(self.lines):05d}_{digest[:8]}.bin"
        self._write(name, data)
        extra = {}
        if self.masked:
            mbuf = np.concatenate(self.pending_mask) if len(self.pending_mask) > 1 else self.pending_mask[0]
            self.pending_mask = [mbuf[n:]] if len(mbuf) > n else []
            mdata = np.ascontiguousarray(mbuf[:n], dtype=np.uint8).tobytes()
            extra = {"mask": name[:-4] + ".mask", "mask_sha256": hashlib.sha256(mdata).hexdigest()}
            self._write(extra["mask"], mdata)
        self.flushed += n
        srcs = {s for _, s in self.docs if s}  # every pending document overlaps this shard
        self.docs = [(e, s) for e, s in self.docs if e > self.flushed]
        self.lines.append(
            {
                "path": name,
                "dtype": self.dtype.name,
                "tokens": int(len(chunk)),
                "docs": int(np.count_nonzero(chunk == self.bos)),
                "sha256": digest,
                "source": self.source or _label(srcs),
                "tokenizer": self.fp,
                "bos": self.bos,
                **extra,
            }
        )

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.out_dir / (name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.out_dir / name)
        self.written.append(self.out_dir / name)

    def finish(self) -> None:
        if self.n_pending:
            self._flush(self.n_pending)


def _encode(tokenizer, batch: list[tuple[str, str]], append_bos: bool, dtype: str):
    """Token array of a batch of documents (BOS first when asked), their end offsets, sources.

    Arrays all the way: a long document's ids never become one Python list of ints, and the
    tokenizer encodes it in pieces (Tokenizer.encode_arrays), so memory stays bounded."""
    texts = [t for t, _ in batch]
    if hasattr(tokenizer, "encode_arrays"):
        encoded = tokenizer.encode_arrays(texts, dtype)
    else:  # any object with encode_batch will do (test doubles, a custom tokenizer)
        encoded = [np.asarray(ids, dtype=dtype) for ids in tokenizer.encode_batch(texts)]
    lens = np.fromiter((len(ids) for ids in encoded), dtype=np.int64, count=len(encoded))
    keep = lens > 0
    bos = np.array([tokenizer.bos_id], dtype=dtype)
    parts = [a for ids in encoded if len(ids) for a in ((bos, ids) if append_bos else (ids,))]
    arr = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    ends = np.cumsum(lens[keep] + append_bos).tolist()
    srcs = [src for (_, src), k in zip(batch, keep) if k]
    return arr, ends, srcs


_WORKER: dict = {}


def _worker_init(tokenizer_json: str, specials: dict[str, int] | None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker process
    from tokenizers import Tokenizer as HFTokenizer

    _WORKER["tok"] = Tokenizer(HFTokenizer.from_str(tokenizer_json), specials)


def _worker_encode(batch: list[tuple[str, str]], append_bos: bool, dtype: str):
    return _encode(_WORKER["tok"], batch, append_bos, dtype)


def _encoded_batches(docs: Iterable, tokenizer, append_bos: bool, dtype: str, workers: int):
    """(tokens, ends, sources) per batch, in document order; `workers` > 1 uses processes."""
    if workers <= 1:
        for batch in _batches(docs):
            yield _encode(tokenizer, batch, append_bos, dtype)
        return
    # fork starts workers instantly with the tokenizer already loaded; TOKENIZERS_PARALLELISM
    # is pinned to false while forking so each child runs one thread (and the library does not
    # warn about forking after its thread pool ran). Spawn is the fallback where fork is absent.
    fork = "fork" in mp.get_all_start_methods()
    ctx = mp.get_context("fork" if fork else "spawn")
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        pool = ctx.Pool(
            workers, _worker_init, (tokenizer.hf.to_str(), tokenizer.specials if tokenizer.foreign else None)
        )
    finally:
        if saved is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    with pool:
        pending: deque = deque()  # bounded, so a huge corpus never piles up in memory
        for batch in _batches(docs, max_chars=1 << 18):  # smaller batches balance the workers
            pending.append(pool.apply_async(_worker_encode, (batch, append_bos, dtype)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def write_shards(
    docs: Iterable,
    tokenizer: Tokenizer,
    out_dir: str | Path,
    shard_tokens: int = 1 << 22,
    source: str = "",
    append_bos: bool = True,
    workers: int = 1,
) -> Path:
    """Tokenise `docs` (str or Document) into shards under `out_dir`; returns the manifest path.

    `append_bos` puts BOS before every document (turn it off only for data that already
    carries its own document markers). `workers` > 1 tokenises in that many processes (each
    single-threaded; with 1, the library's own thread pool is used). Raises AdambaError when
    no tokens came out.
    """
    if shard_tokens < 1:
        raise AdambaError(f"shard_tokens must be >= 1, got {shard_tokens}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    w = _ShardWriter(out, dtype, shard_tokens, source, tokenizer.fingerprint(), tokenizer.bos_id)

    def fill() -> None:
        for arr, ends, srcs in _encoded_batches(docs, tokenizer, append_bos, dtype.name, workers):
            if len(arr):
                w.add(arr, ends, srcs)

    empty = f"no usable text: nothing to tokenise for {out} (every document was empty)"
    return write_all(w, fill, out, empty)


def write_all(w: _ShardWriter, fill: Callable[[], None], out: Path, empty: str) -> Path:
    """Run `fill` (which adds to `w`), finish the last shard and write the manifest; a failure
    removes the shards written so far (no orphans), nothing written is `empty` as an error."""
    try:
        fill()
        w.finish()
    except BaseException:
        for p in w.written:
            p.unlink(missing_ok=True)
        raise
    if not w.lines:
        raise AdambaError(empty)
    return write_manifest(out, w.lines)


def write_manifest(out: Path, lines: list[dict]) -> Path:
    """manifest.jsonl of `lines` (atomic), then remove the shards (and loss masks) of an older
    manifest in the same folder."""
    manifest = out / MANIFEST
    tmp = out / (MANIFEST + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(manifest)
    keep = {line["path"] for line in lines} | {line["mask"] for line in lines if line.get("mask")}
    for p in out.iterdir():
        if (SHARD_RE.fullmatch(p.name) or p.suffix == ".mask") and p.name not in keep:
            p.unlink(missing_ok=True)
    return manifest


def manifest_path(path: str | Path) -> Path:
    """The manifest.jsonl for a manifest file or a folder holding one; AdambaError if absent."""
    p = Path(path)
    m = p / MANIFEST if p.is_dir() else p
    if not m.is_file():
        raise AdambaError(f"manifest not found: {m} (make one with `adamba data shards`)")
    return m


MANIFEST_FIX = "give the manifest.jsonl that `adamba data shards` wrote, or its folder"
DTYPES = ("uint16", "uint32")


def _shard_info(d: object, base: Path) -> ShardInfo:
    """A ShardInfo from one parsed manifest line; ValueError saying what is wrong with it."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got {type(d).__name__}")
    if missing := [k for k in ("path", "dtype", "tokens", "sha256") if k not in d]:
        raise ValueError(f"missing {', '.join(missing)}")
    if not isinstance(d["path"], str) or not d["path"]:
        raise ValueError(f"path must be a file name, got {d['path']!r}")
    if d["dtype"] not in DTYPES:
        raise ValueError(f"dtype must be {' or '.join(DTYPES)}, got {d['dtype']!r}")
    for k in ("tokens", "docs", "bos"):
        v = d.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{k} must be a whole number >= 0, got {v!r}")
    for k in ("sha256", "source", "tokenizer", "mask", "mask_sha256"):
        if not isinstance(d.get(k, ""), str):
            raise ValueError(f"{k} must be a string, got {d[k]!r}")
    fields = {k: v for k, v in d.items() if k in ShardInfo.__dataclass_fields__}
    fields.setdefault("docs", 0)
    fields.setdefault("source", "")
    fields.setdefault("tokenizer", "")
    if fields.get("mask"):
        fields["mask"] = str((base / fields["mask"]).resolve())
    return ShardInfo(**dict(fields, path=(base / d["path"]).resolve()))


def read_manifest(path: str | Path) -> list[ShardInfo]:
    """Shards listed in a manifest (file or folder), with paths resolved next to it. A binary
    file, a line that is not JSON (a torn write) or a line missing a field is one AdambaError
    naming the file and line."""
    m = manifest_path(path)
    shards = []
    for n, line in enumerate(read_text_file(m, "a manifest", MANIFEST_FIX).splitlines(), 1):
        if not line.strip():
            continue
        try:
            shards.append(_shard_info(json.loads(line), m.parent))
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise AdambaError(
                f"{m}:{n} is not a valid manifest line ({e}); rewrite it with `adamba data shards`"
            ) from None
    if not shards:
        raise AdambaError(f"manifest {m} lists no shards; {MANIFEST_FIX}")
    return shards


def load_tokens(shard: ShardInfo) -> np.ndarray:
    """The shard's tokens as a read-only memory map (nothing is read until sliced)."""
    p = Path(shard.path)
    if not p.is_file():
        raise AdambaError(f"shard missing: {p} (listed in its manifest; re-run `adamba data shards`)")
    itemsize = np.dtype(shard.dtype).itemsize
    size = p.stat().st_size
    if size != shard.tokens * itemsize:
        raise AdambaError(
            f"shard {p} has {size} bytes but its manifest says {shard.tokens} {shard.dtype} tokens; "
            "the file is truncated or replaced (run `adamba data verify`)"
        )
    return np.memmap(p, dtype=shard.dtype, mode="r", shape=(shard.tokens,))


def load_mask(shard: ShardInfo) -> np.ndarray | None:
    """The shard's loss mask (uint8 per token, 1 = a training target) as a memory map, or None
    for plain text."""
    if not shard.mask:
        return None
    p = Path(shard.mask)
    if not p.is_file() or p.stat().st_size != shard.tokens:
        raise AdambaError(f"loss mask {p} is missing or not {shard.tokens} bytes (run `adamba data verify`)")
    return np.memmap(p, dtype=np.uint8, mode="r", shape=(shard.tokens,))


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_shard(shard: ShardInfo, rehash: bool = True) -> str | None:
    """A one-line problem with this shard (missing, wrong size, wrong hash), or None."""
    p = Path(shard.path)
    if not p.is_file():
        return f"{p}: missing"
    want = shard.tokens * np.dtype(shard.dtype).itemsize
    if p.stat().st_size != want:
        return f"{p}: size {p.stat().st_size} bytes, manifest says {want}"
    if rehash and file_sha256(p) != shard.sha256:
        return f"{p}: sha256 mismatch (content changed since it was written)"
    if shard.mask:
        m = Path(shard.mask)
        if not m.is_file() or m.stat().st_size != shard.tokens:
            return f"{m}: loss mask missing or not {shard.tokens} bytes"
        if rehash and file_sha256(m) != shard.mask_sha256:
            return f"{m}: sha256 mismatch (loss mask changed since it was written)"
    return None


def verify(manifest: str | Path | list[ShardInfo]) -> list[str]:
    """Re-hash every shard of a manifest; returns the problems found (empty list = all good)."""
    shards = manifest if isinstance(manifest, list) else read_manifest(manifest)
    return [msg for s in shards if (msg := check_shard(s)) is not None]


def shard_dict(shard: ShardInfo) -> dict:
    """JSON form of a ShardInfo (path as a string)."""
    d = asdict(shard)
    d["path"] = str(shard.path)
    return d
