"""Evaluation tasks by name: multiple choice scored by log-likelihood (ARC-Easy/Challenge,
HellaSwag, any local file in their format) and GSM8K by generation with exact match.

Each task reads its hub dataset through `datasets` (allenai/ai2_arc, Rowan/hellaswag,
openai/gsm8k) or a local file given with --data (JSONL, JSON or parquet, in the hub's record
format), so evaluation works offline.
"""

from __future__ import annotations

import json
from pathlib import Path

from adamba.errors import AdambaError

# task -> (hub dataset, config, split)
HUB = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "gsm8k": ("openai/gsm8k", "main", "test"),
    "gsm8k_train": ("openai/gsm8k", "main", "train"),  # few-shot examples
}


def read_records(path: str | Path) -> list[dict]:
    """Records of a local JSONL / JSON list / parquet file."""
    p = Path(path)
    if not p.is_file():
        raise AdambaError(f"task data {p} does not exist")
    try:
        if p.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(p).to_pylist()
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json" and text.lstrip().startswith("["):
            return json.loads(text)
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    except (ValueError, OSError) as e:
        raise AdambaError(f"cannot read task data {p}: {e}") from None


def hub_records(task: str) -> list[dict]:
    """The task's hub dataset (needs the network the first time; cached by `datasets`)."""
    name, config, split = HUB[task]
    try:
        from datasets import load_dataset
    except ImportError:
        raise AdambaError(
            f"task {task} reads {name} with the datasets package (pip install 'adamba[hf]'); "
            f"or pass a local file: --data {task}=PATH.jsonl"
        ) from None
    try:
        return list(load_dataset(name, config, split=split))
    except Exception as e:  # offline, hub down, no such split
        raise AdambaError(
            f"cannot load {name} for task {task} ({type(e).__name__}); pass a local file: --data {task}=PATH.jsonl"
        ) from None


def records(task: str, path: str | None) -> list[dict]:
    return read_records(path) if path else hub_records(task)
