"""Curation: normalise, deduplicate (exact and near), filter; count every removal.

Per document (in worker processes): Unicode NFC and whitespace normalisation, a content hash,
Gopher-style quality filters and a MinHash signature over word shingles. In the parent, in input
order (so the result does not depend on the number of workers): exact duplicates by hash, then
near duplicates by LSH banding over the signatures, verified by the signatures' agreement. The first
copy seen is kept. Everything removed is counted per named filter, with a few examples, in a
`CurateReport`; `curate` also writes `processed/<run>.jsonl` and `metadata/<run>.json`.

The MinHash signatures and LSH index are in adamba/data/minhash.py, the quality filters in
adamba/data/quality.py.
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
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from adamba.data.minhash import LSHIndex, MinHasher
from adamba.data.quality import quality_reason
from adamba.data.sources import Document, SourceStats, read_text_file
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
    created = [d for d in (proc.parent, meta.parent, out_dir) if not d.exists()]
    proc.parent.mkdir(parents=True, exist_ok=True)
    meta.parent.mkdir(parents=True, exist_ok=True)
    tmp = proc.with_name(proc.name + f".tmp{os.getpid()}")
    file_hash = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for _, line in _run_curation(docs(), cfg, workers, progress, report, keep_text=False):
                file_hash.update(line)
                f.write(line)
        if report.docs_in == 0:  # nothing readable at all (filters removing everything is a result)
            tmp.unlink()
            for d in created:  # leave no folders behind that this run made
                if not any(d.iterdir()):
                    d.rmdir()
            raise stats.no_text_error(inputs)
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
    """Documents back from a `processed/<run>.jsonl` file; a line that is not a curated record
    (binary data, a torn write, another file) is one AdambaError naming the file and line."""
    fix = "give a processed/<run>.jsonl written by `adamba data curate`"
    text = read_text_file(path, "curated output", fix)
    for n, line in enumerate(text.splitlines(), 1):
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                raise ValueError("no text field")
        except ValueError as e:
            raise AdambaError(f"{path}:{n} is not a curated record ({e}); {fix}") from None
        yield Document(rec["text"], rec.get("id", ""), rec.get("source", ""), rec.get("meta", {}))
