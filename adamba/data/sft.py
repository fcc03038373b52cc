"""SFT data: conversations rendered with the chat template into token shards that carry a loss mask.

Every conversation (from the Glaive / ShareGPT / ToolBench / OpenAI parsers of adamba/data/chat.py,
or a question / answer pair with its reasoning, as GSM8K and MetaMathQA store them) becomes one
document: BOS, the turns with their special tokens, and beside each token one byte saying whether
training predicts it (the assistant's own tokens and the <|end|> closing its turn: 1; system,
user and tool-result tokens: 0). The shards are ordinary token shards plus a `.mask` file each,
so the loader, mixtures, verify and resume work unchanged; the loader turns masked targets into
-100 (adamba/data/loader.py) and the `sft` objective trains on what is left.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from adamba.data.chat import (
    ChatFormatError,
    ChatStats,
    Conversation,
    Message,
    parse_glaive,
    parse_records,
    parse_sharegpt,
    parse_toolbench,
)
from adamba.data.registry import open_records
from adamba.data.shards import _ShardWriter, token_dtype, write_all
from adamba.data.template import render_conversation
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError

QA_KEYS = (("question", "answer"), ("query", "response"), ("prompt", "completion"), ("instruction", "output"))


def parse_qa(record: dict[str, Any]) -> Conversation:
    """A question / answer record (GSM8K `question`/`answer`, MetaMathQA `query`/`response`,
    `prompt`/`completion`, `instruction`/`output`) as one user turn and one assistant turn; the
    answer keeps its reasoning (chain of thought) as the assistant's text."""
    for q, a in QA_KEYS:
        if q in record and a in record:
            question, answer = record[q], record[a]
            if not isinstance(question, str) or not isinstance(answer, str) or not question or not answer:
                raise ChatFormatError("empty or non-text question/answer")
            return Conversation([Message("user", question), Message("assistant", answer)]).validate()
    raise ChatFormatError("no question/answer fields", "/".join(f"{q}+{a}" for q, a in QA_KEYS))


PARSERS = {
    "qa": parse_qa,
    "sharegpt": parse_sharegpt,  # also OpenAI `messages` with tool_calls
    "glaive": parse_glaive,
    "toolbench": parse_toolbench,
}


def write_chat_shards(
    convs: Iterable[Conversation],
    tokenizer: Tokenizer,
    out_dir: str | Path,
    shard_tokens: int = 1 << 22,
    source: str = "",
) -> Path:
    """Render `convs` into masked shards under `out_dir`; returns the manifest. A conversation
    with no assistant turn (nothing to train on) is skipped."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    w = _ShardWriter(out, dtype, shard_tokens, source, tokenizer.fingerprint(), tokenizer.bos_id, masked=True)

    def fill() -> None:
        for conv in convs:
            r = render_conversation(tokenizer, conv)
            if not any(r.mask):
                continue
            ids = np.asarray(r.ids, dtype=dtype)
            w.add(ids, [len(ids)], [conv.source or source], np.asarray(r.mask, dtype=np.uint8))

    empty = f"no conversation with an assistant turn to train on: nothing written to {out}"
    return write_all(w, fill, out, empty)


def read_records(path: str | Path):
    """The records of a JSONL file (one object a line), a JSON file (a list of objects) or a
    Parquet file; a line that is not JSON is passed on as such, for parse_records to count."""
    p = Path(path)
    if not p.is_file():
        raise AdambaError(f"{p}: no such file")
    if p.suffix == ".parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(p).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    with open(p, encoding="utf-8") as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
        f.seek(0)
        if head == "[":
            yield from json.load(f)
            return
        for line in f:
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    yield line  # not an object: counted as skipped


def chat_shards_from_files(
    paths: list[str], fmt: str, tokenizer: Tokenizer, out_dir: str | Path, limit: int = 0
) -> tuple[Path, ChatStats]:
    """`adamba data chat`: records in format `fmt` -> masked shards. An input is a JSONL / JSON /
    Parquet file, or a dataset read through `datasets` (registry.open_records: hf:owner/name,
    hf:/a/local/folder for offline use, gsm8k)."""
    if fmt not in PARSERS:
        raise AdambaError(f"--format {fmt!r}: choose one of {', '.join(PARSERS)}")
    stats = ChatStats()

    def records():
        n = 0
        for p in paths:
            for rec in read_records(p) if Path(p).exists() else open_records(p):
                if limit and n >= limit:
                    return
                n += 1
                yield rec

    convs = parse_records(records(), PARSERS[fmt], stats, source=fmt)
    manifest = write_chat_shards(convs, tokenizer, out_dir, source=fmt)
    return manifest, stats
