"""Raw text sources -> Document records (the unit every later pipeline stage works on).

Readers stream: a corpus never has to fit in memory, and a bad record (binary file, broken JSONL
line, missing field) is counted in a `SourceStats` and skipped instead of stopping a long run.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import sysconfig
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adamba.errors import AdambaError


@dataclass
class Document:
    text: str
    id: str = ""  # stable id within its source (e.g. relative path, line number)
    source: str = ""  # provenance: file path, dataset name ...
    meta: dict[str, Any] = field(default_factory=dict)


class RecordError(ValueError):
    """Raised by a record -> text function for a record it cannot use; counted as malformed, skipped."""


# A record -> text mapping for structured sources: a field name, or a function returning the text,
# a ready Document (to carry meta such as chat messages), or None to skip the record.
TextField = str | Callable[[dict[str, Any]], "str | Document | None"]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json", ".jsonl.gz", ".ndjson.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
MAX_EXAMPLES = 5  # skipped items remembered per stats object, for the summary line
BINARY_SNIFF_BYTES = 8192
MAX_BAD_UTF8 = 0.01  # above this fraction of undecodable characters a file counts as binary


@dataclass
class SourceStats:
    """What a reader saw and what it skipped; printed as a summary, stored in curation metadata."""

    files: int = 0
    documents: int = 0
    binary_files: int = 0  # NUL bytes or mostly invalid UTF-8
    repaired_files: int = 0  # a few invalid UTF-8 bytes, replaced by U+FFFD and kept
    malformed: int = 0  # JSON lines that do not parse or are not objects
    missing_field: int = 0  # records without the text field (or the text function returned None)
    empty: int = 0  # documents with no non-space text
    examples: list[str] = field(default_factory=list)  # first few "where: why" of skipped items

    @property
    def skipped(self) -> int:
        return self.binary_files + self.malformed + self.missing_field + self.empty

    def skip(self, kind: str, where: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {kind}")

    def merge(self, other: SourceStats) -> None:
        for k in (
            "files",
            "documents",
            "binary_files",
            "repaired_files",
            "malformed",
            "missing_field",
            "empty",
        ):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.examples.extend(other.examples[: max(0, MAX_EXAMPLES - len(self.examples))])

    def summary(self) -> str:
        s = f"{self.documents} documents from {self.files} files"
        parts = [
            f"{n} {k.replace('_', ' ')}"
            for k in ("binary_files", "malformed", "missing_field", "empty")
            if (n := getattr(self, k))
        ]
        if parts:
            s += "; skipped " + ", ".join(parts)
        if self.repaired_files:
            s += f"; {self.repaired_files} files with a few invalid UTF-8 bytes replaced"
        return s

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def no_text_error(self, inputs: Iterable[str | Path]) -> AdambaError:
        """The one-line error for inputs that gave no document at all (binary, empty, wrong field)."""
        return AdambaError(
            f"no usable text in {', '.join(map(str, inputs))}: {self.summary()}; give UTF-8 text, "
            "JSONL or Parquet files (--text-field names the JSON/Parquet field holding the text)"
        )


def decode_text(data: bytes) -> str | None:
    """UTF-8 text of a file, or None when it looks binary (NUL bytes, or >1% undecodable)."""
    if b"\0" in data[:BINARY_SNIFF_BYTES]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        bad = text.count("\ufffd")
        return text if bad <= MAX_BAD_UTF8 * max(1, len(text)) else None


def read_text_file(path: str | Path, what: str, fix: str) -> str:
    """The UTF-8 text of a file the user named as `what` (a manifest, a stage ...), or an
    AdambaError naming it and `fix` when it is binary or not UTF-8. The first bytes are checked
    before the rest is read, so a large binary file given by mistake is never loaded whole."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(BINARY_SNIFF_BYTES)
            if b"\0" not in head:
                try:
                    codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
                    return (head + f.read()).decode("utf-8")
                except UnicodeDecodeError:
                    pass
    except OSError as e:
        raise AdambaError(
            f"{path}: cannot read it ({e.strerror or e}); check the path and its permissions"
        ) from None
    raise AdambaError(f"{path} is not {what}: it holds binary data, not UTF-8 text; {fix}")


def _check_exists(path: Path) -> Path:
    if not path.exists():
        raise AdambaError(f"{path}: no such file or folder (check the path, or the working directory)")
    return path


def _hidden(path: Path, root: Path) -> bool:
    return any(p.startswith(".") for p in path.relative_to(root).parts)


def expand_paths(paths: Iterable[str | Path], pattern: str = "**/*") -> list[tuple[Path, str]]:
    """(file, name) pairs: files named directly (name = file name), and the files under each folder
    matching `pattern` (name = path relative to that folder; sorted; dotfiles and dot-folders left out)."""
    out: list[tuple[Path, str]] = []
    for p in paths:
        p = _check_exists(Path(p))
        if p.is_dir():
            files = sorted(f for f in p.glob(pattern) if f.is_file() and not _hidden(f, p))
            out += [(f, f.relative_to(p).as_posix()) for f in files]
        else:
            out.append((p, p.name))
    return out


def _is(path: Path, suffixes: tuple[str, ...]) -> bool:
    return path.name.lower().endswith(suffixes)


def _paragraphs(text: str) -> Iterator[str]:
    block: list[str] = []
    for line in text.splitlines():
        if line.strip():
            block.append(line)
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def _chunks(text: str, min_words: int) -> Iterator[str]:
    """Consecutive paragraphs joined until each piece has at least `min_words` words."""
    block: list[str] = []
    n = 0
    for para in _paragraphs(text):
        block.append(para)
        n += len(para.split())
        if n >= min_words:
            yield "\n\n".join(block)
            block, n = [], 0
    if block:
        yield "\n\n".join(block)


def text_documents(
    paths: Iterable[str | Path],
    pattern: str = "**/*",
    paragraphs: bool = False,
    stats: SourceStats | None = None,
    chunk_words: int = 0,
) -> Iterator[Document]:
    """Plain text files (folders are globbed): one Document per file, or per blank-line-separated
    block (`paragraphs`), or per run of blocks of at least `chunk_words` words (one big file, e.g. a
    book, becomes documents of a useful size)."""
    stats = stats if stats is not None else SourceStats()
    for path, name in expand_paths(paths, pattern):
        yield from _text_file(path, name, paragraphs, stats, chunk_words)


def _text_file(
    path: Path, name: str, paragraphs: bool, stats: SourceStats, chunk_words: int = 0
) -> Iterator[Document]:
    stats.files += 1
    text = decode_text(path.read_bytes())
    if text is None:
        stats.skip("binary_files", str(path))
        return
    if "\ufffd" in text:
        stats.repaired_files += 1
    paragraphs = paragraphs or chunk_words > 0
    pieces = _chunks(text, chunk_words) if chunk_words > 0 else _paragraphs(text) if paragraphs else [text]
    for i, piece in enumerate(pieces):
        where = f"{path}#{i}" if paragraphs else str(path)
        if not piece.strip():
            stats.skip("empty", where)
            continue
        stats.documents += 1
        yield Document(piece, id=f"{name}#{i}" if paragraphs else name, source=str(path))


def _record_document(
    rec: Any, text_field: TextField, rid: str, source: str, stats: SourceStats
) -> Document | None:
    """Apply the text mapping to one record, counting what is skipped."""
    if not isinstance(rec, dict):
        stats.skip("malformed", f"{source}:{rid}")
        return None
    if callable(text_field):
        try:
            got = text_field(rec)
        except RecordError as e:
            stats.skip("malformed", f"{source}:{rid} ({e})")
            return None
    else:
        got = rec.get(text_field)
    if isinstance(got, Document):
        doc = got
        doc.id, doc.source = doc.id or rid, doc.source or source
    elif isinstance(got, str):
        doc = Document(got, id=rid, source=source)
    else:
        stats.skip("missing_field", f"{source}:{rid}")
        return None
    if not doc.text.strip():
        stats.skip("empty", f"{source}:{rid}")
        return None
    stats.documents += 1
    return doc


def _open_lines(path: Path) -> Iterator[bytes]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        yield from f


def jsonl_documents(
    paths: Iterable[str | Path],
    text_field: TextField = "text",
    stats: SourceStats | None = None,
) -> Iterator[Document]:
    """JSON Lines (optionally .gz): one record per line; `text_field` names the field or maps a record.

    A `.json` file holding one JSON array of records is read whole (such files are usually small:
    ShareGPT dumps, ARC tasks). Lines that do not parse are counted as malformed and skipped.
    """
    stats = stats if stats is not None else SourceStats()
    for path, _ in expand_paths(paths):
        stats.files += 1
        src = str(path)
        if path.name.lower().endswith((".json", ".json.gz")) and _starts_with_bracket(path):
            try:
                records = json.loads(b"".join(_open_lines(path)))
            except (json.JSONDecodeError, UnicodeDecodeError):
                stats.skip("malformed", src)
                continue
            for i, rec in enumerate(records if isinstance(records, list) else [records]):
                if (doc := _record_document(rec, text_field, str(i), src, stats)) is not None:
                    yield doc
            continue
        for lineno, raw in enumerate(_open_lines(path), start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError):
                stats.skip("malformed", f"{src}:{lineno}")
                continue
            if (doc := _record_document(rec, text_field, str(lineno), src, stats)) is not None:
                yield doc


def _starts_with_bracket(path: Path) -> bool:
    for raw in _open_lines(path):
        if s := raw.strip():
            return s.startswith(b"[")
    return False


def parquet_documents(
    paths: Iterable[str | Path],
    text_field: TextField = "text",
    columns: list[str] | None = None,
    batch_size: int = 1024,
    stats: SourceStats | None = None,
) -> Iterator[Document]:
    """Parquet files read in record batches within row groups: memory stays at one batch, never a file.

    With a field name only that column is read; with a function, `columns` (default: all) are.
    """
    import pyarrow.parquet as pq

    stats = stats if stats is not None else SourceStats()
    for path, _ in expand_paths(paths):
        stats.files += 1
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for non-parquet bytes
            stats.skip("binary_files", f"{path} ({type(e).__name__})")
            continue
        cols = [text_field] if isinstance(text_field, str) else columns
        if isinstance(text_field, str) and text_field not in pf.schema_arrow.names:
            raise AdambaError(
                f"{path}: no column {text_field!r}; columns are {', '.join(pf.schema_arrow.names)} (choose one with --text-field)"
            )
        row = 0
        for batch in pf.iter_batches(batch_size=batch_size, columns=cols):
            for rec in batch.to_pylist():
                if (doc := _record_document(rec, text_field, str(row), str(path), stats)) is not None:
                    yield doc
                row += 1


def hf_offline() -> bool:
    """True when HF_HUB_OFFLINE or HF_DATASETS_OFFLINE asks for no network access."""
    return any(
        os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def hf_records(
    path: str,
    name: str | None = None,
    split: str = "train",
    data_files: str | list[str] | None = None,
    revision: str | None = None,
    streaming: bool = True,
    cache_dir: str | None = None,
    stats: SourceStats | None = None,
) -> Iterator[dict]:
    """The raw records of a Hugging Face dataset through `datasets.load_dataset` (optional extra
    `adamba[hf]`): a hub name, or a local folder / builder ("json", "parquet" with `data_files`)
    for offline use.

    Streams by default (no full download); in offline mode (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)
    it reads the local cache instead, since streaming needs the network. HF_ENDPOINT is honoured by
    `datasets` itself.
    """
    try:
        import datasets
    except ImportError:
        raise AdambaError(
            f"reading the Hugging Face dataset {path!r} needs the `datasets` package: pip install 'adamba[hf]'"
        ) from None
    offline = hf_offline()
    label = path + (f"/{name}" if name else "") + f":{split}"
    try:
        ds = datasets.load_dataset(
            path,
            name,
            split=split,
            data_files=data_files,
            revision=revision,
            streaming=streaming and not offline,
            cache_dir=cache_dir,
        )
    except Exception as e:  # network, missing dataset, not cached offline: all user-fixable
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (
            "offline mode is on (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE): download it once online, or unset them"
            if offline
            else f"check the name and your network or HF_ENDPOINT ({os.environ.get('HF_ENDPOINT', 'https://huggingface.co')})"
        )
        raise AdambaError(f"could not load Hugging Face dataset {label}: {msg}; {hint}") from e
    if stats is not None:
        stats.files += 1
    yield from ds


def hf_documents(
    path: str,
    name: str | None = None,
    split: str = "train",
    text_field: TextField = "text",
    data_files: str | list[str] | None = None,
    revision: str | None = None,
    streaming: bool = True,
    cache_dir: str | None = None,
    limit: int | None = None,
    stats: SourceStats | None = None,
) -> Iterator[Document]:
    """A Hugging Face dataset's records as Documents (`hf_records`; `text_field` as for JSONL)."""
    stats = stats if stats is not None else SourceStats()
    label = path + (f"/{name}" if name else "") + f":{split}"
    n = 0
    records = hf_records(path, name, split, data_files, revision, streaming, cache_dir, stats)
    for i, rec in enumerate(records):
        if limit is not None and n >= limit:
            break
        if (doc := _record_document(rec, text_field, str(i), f"hf:{label}", stats)) is not None:
            n += 1
            yield doc


def read_documents(
    paths: Iterable[str | Path],
    text_field: TextField = "text",
    paragraphs: bool = False,
    stats: SourceStats | None = None,
    chunk_words: int = 0,
) -> Iterator[Document]:
    """Any mix of files and folders, each file read by its kind: JSONL/JSON, Parquet, else plain text
    (split as in `text_documents`)."""
    stats = stats if stats is not None else SourceStats()
    for path, name in expand_paths(paths):
        if _is(path, JSONL_SUFFIXES):
            yield from jsonl_documents([path], text_field, stats)
        elif _is(path, PARQUET_SUFFIXES):
            yield from parquet_documents([path], text_field, stats=stats)
        else:
            yield from _text_file(path, name, paragraphs, stats, chunk_words)


STDLIB_TEST_DIRS = {"test", "tests", "idle_test"}
STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


def python_stdlib_documents(
    include_tests: bool = False, stats: SourceStats | None = None
) -> Iterator[Document]:
    """The running Python's standard library sources: a real code corpus every install already has.

    One Document per .py file, id = path relative to the stdlib root, sorted, so the corpus is
    the same on every run of the same Python. Test folders are left out unless asked for: they
    hold deliberately odd files (bad encodings, huge literals) and are mostly repetitive.
    """
    stats = stats if stats is not None else SourceStats()
    root = Path(sysconfig.get_paths()["stdlib"])
    _check_exists(root)
    skip = STDLIB_SKIP_DIRS | (set() if include_tests else STDLIB_TEST_DIRS)
    files = sorted(
        (p.relative_to(root).as_posix(), p)
        for p in root.rglob("*.py")
        if not skip & set(p.relative_to(root).parts[:-1])
    )
    for rel, path in files:
        stats.files += 1
        text = decode_text(path.read_bytes())
        if text is None:
            stats.skip("binary_files", rel)
            continue
        if not text.strip():
            stats.skip("empty", rel)
            continue
        stats.documents += 1
        yield Document(text, id=rel, source="python-stdlib")
