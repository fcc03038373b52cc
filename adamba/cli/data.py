"""`adamba data ...`: the data pipeline's commands (adamba/data/commands.py does the work).

adamba data curate    INPUT... --out DIR [--preset web|code|dedup]
adamba data tokenizer INPUT... --vocab-size N --out tokenizer.json
adamba data shards    INPUT... --tokenizer tokenizer.json --out DIR [--workers N]
adamba data chat     INPUT... --format qa|sharegpt|glaive|toolbench --tokenizer tokenizer.json --out DIR
adamba data verify    PATH...              (manifests, shard folders, stages, snapshots)
adamba data mix       STAGE.toml [--freeze VERSION --out DIR]
adamba data inspect   PATH                 (manifest, shard folder, stage or snapshot)
"""

from __future__ import annotations

from adamba.data import commands
from adamba.errors import AdambaError


def _verify(paths: list[str]) -> None:
    lines, bad = commands.verify_cmd(paths)
    _print(lines)
    if bad:
        raise AdambaError(
            f"{bad} problem(s) found (listed above); re-create that data with `adamba data shards`"
        )


def _print(lines: list[str]) -> None:
    print("\n".join(lines))


def register(sub) -> None:
    """Add `adamba data ...` to the top-level `adamba` subparsers."""
    data = sub.add_parser("data", help="data pipeline: curate, tokenizer, shards, chat, verify, mix, inspect")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")

    t = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer and report its compression")
    t.add_argument("inputs", nargs="+", help="text/JSONL/Parquet files or folders")
    t.add_argument("--out", required=True, help="tokenizer.json path (or folder)")
    t.add_argument("--vocab-size", type=int, default=8192)
    t.add_argument("--text-field", default="text", help="JSONL/Parquet field holding the text")
    t.add_argument("--max-mb", type=float, default=200.0, help="train on at most this much text")
    t.add_argument("--paragraphs", action="store_true", help="split text files into documents at blank lines")
    t.add_argument("--progress", action="store_true")
    t.set_defaults(
        func=lambda a: _print(
            commands.tokenizer_cmd(
                a.inputs,
                a.out,
                a.vocab_size,
                a.text_field,
                a.max_mb,
                show_progress=a.progress,
                paragraphs=a.paragraphs,
            )
        )
    )

    s = sub.add_parser("shards", help="tokenise documents into hashed binary shards + manifest.jsonl")
    s.add_argument("inputs", nargs="+", help="text/JSONL/Parquet files or folders (e.g. curated output)")
    s.add_argument("--tokenizer", required=True, help="tokenizer.json")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--shard-tokens", type=int, default=1 << 22)
    s.add_argument("--source", default="", help="provenance label stored per shard")
    s.add_argument("--workers", type=int, default=1, help="tokeniser processes")
    s.add_argument("--text-field", default="text")
    s.add_argument("--paragraphs", action="store_true", help="split text files into documents at blank lines")
    s.set_defaults(
        func=lambda a: _print(
            commands.shards_cmd(
                a.inputs, a.tokenizer, a.out, a.shard_tokens, a.source, a.workers, a.text_field, a.paragraphs
            )
        )
    )

    c = sub.add_parser(
        "chat",
        help="render chat / QA records into SFT shards with a loss mask (assistant tokens only)",
        description="Parse chat records (OpenAI/ShareGPT messages with tool calls, Glaive, ToolBench, or "
        "question/answer pairs such as GSM8K's), render them with adamba's chat template and write token "
        'shards with a loss mask beside each: a phase with objective = "sft" trains only on the '
        "assistant's tokens. Malformed records are counted and skipped.",
    )
    c.add_argument(
        "inputs",
        nargs="+",
        help="JSONL, JSON (a list) or Parquet files, or datasets read with `datasets`: hf:owner/name[:config], "
        "hf:/a/local/folder (offline), or a known name such as gsm8k (gsm8k:test for its test split)",
    )
    c.add_argument("--format", required=True, choices=["qa", "sharegpt", "glaive", "toolbench"])
    c.add_argument("--tokenizer", required=True, help="tokenizer.json (adamba's: it has the chat tokens)")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--limit", type=int, default=0, help="read at most this many records (0: all)")
    c.set_defaults(func=lambda a: _print(commands.chat_cmd(a.inputs, a.format, a.tokenizer, a.out, a.limit)))

    v = sub.add_parser("verify", help="re-hash shards; name any missing or corrupted one")
    v.add_argument(
        "paths", nargs="+", help="manifest.jsonl files, shard folders, stage .toml or snapshot .json"
    )
    v.set_defaults(func=lambda a: _verify(a.paths))

    m = sub.add_parser("mix", help="show a stage's mixture plan; --freeze writes a versioned snapshot")
    m.add_argument("stage", help="stage .toml")
    m.add_argument("--freeze", default="", metavar="VERSION", help="e.g. v1.0")
    m.add_argument("--out", default="", help="snapshot folder (default: beside the stage file)")
    m.set_defaults(func=lambda a: _print(commands.mix_cmd(a.stage, a.freeze, a.out)))

    i = sub.add_parser("inspect", help="summarise a manifest, shard folder, stage or snapshot")
    i.add_argument("path")
    i.add_argument(
        "--tokenizer", default="", help="tokenizer.json for sample text (default: found near the data)"
    )
    i.add_argument("--samples", type=int, default=2)
    i.set_defaults(func=lambda a: _print(commands.inspect_cmd(a.path, a.tokenizer, a.samples)))

    c = sub.add_parser("curate", help="normalise, deduplicate (exact + MinHash) and quality-filter text")
    c.add_argument(
        "inputs", nargs="+", help="files/folders (text, JSONL, Parquet), dataset names, or hf:owner/name"
    )
    c.add_argument(
        "--out", required=True, help="output folder: processed/<run>.jsonl and metadata/<run>.json"
    )
    c.add_argument("--workers", type=int, default=1, help="worker processes")
    c.add_argument(
        "--preset", choices=["web", "code", "dedup"], default="web", help="filters for prose or code"
    )
    c.add_argument("--run", default=None, help="run name (default: a hash of inputs and settings)")
    c.add_argument("--text-field", default="text", help="JSONL/Parquet field holding the text")
    c.add_argument("--paragraphs", action="store_true", help="split text files into documents at blank lines")
    c.add_argument(
        "--chunk-words", type=int, default=0, help="split text files at blank lines into >= N-word documents"
    )
    c.add_argument("--no-progress", action="store_true")
    c.set_defaults(
        func=lambda a: _print(
            commands.curate_cmd(
                a.inputs,
                a.out,
                a.workers,
                a.preset,
                a.run,
                a.text_field,
                a.paragraphs,
                not a.no_progress,
                a.chunk_words,
            )
        )
    )
