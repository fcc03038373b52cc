"""Small real corpora and configs shared by tests (no dependency on ../shared)."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from adamba.config import Config, ModelConfig, apply_dict

STDLIB = Path(sysconfig.get_paths()["stdlib"])
MODULES = [
    "textwrap.py",
    "string.py",
    "shlex.py",
    "fnmatch.py",
    "glob.py",
    "bisect.py",
    "heapq.py",
    "colorsys.py",
]


def stdlib_texts() -> list[str]:
    return [(STDLIB / m).read_text() for m in MODULES if (STDLIB / m).is_file()]


def make_tiny_data(root: Path, vocab_size: int = 400) -> dict:
    """Tokenizer + train/val manifests built from a few stdlib modules."""
    from adamba.data.shards import write_shards
    from adamba.data.tokenizer import Tokenizer

    texts = stdlib_texts()
    tok = Tokenizer.train(texts, vocab_size)
    tok_path = root / "tokenizer.json"
    tok.save(tok_path)
    train = write_shards(texts[1:], tok, root / "train", source="stdlib")
    val = write_shards(texts[:1], tok, root / "val", source="stdlib")
    return {"tokenizer": str(tok_path), "train": str(train), "val": str(val)}


def tiny_overrides(data: dict, out: Path, steps: int = 8) -> list[str]:
    return [
        "model.d_model=32",
        "model.n_layer=2",
        "model.attn.n_head=2",
        "model.attn.n_kv_head=1",
        "model.max_seq_len=32",
        "data.seq_len=32",
        f"data.train={data['train']}",
        f"data.val={data['val']}",
        f"data.tokenizer={data['tokenizer']}",
        "train.batch_size=4",
        f"train.max_steps={steps}",
        "train.eval_every=4",
        "train.eval_batches=2",
        "train.ckpt_every=4",
        "train.lr=1e-2",
        "run.progress=false",
        f"run.out_dir={out}",
    ]


def model_config(*tables: dict, **kw) -> ModelConfig:
    """A validated ModelConfig from nested dicts, later ones winning key by key inside tables:
    model_config({"d_model": 64, "attn": {"n_head": 4}}, attn={"window": 5})."""
    merged: dict = {}
    for t in (*tables, kw):
        for k, v in t.items():
            merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
    cfg = Config()
    apply_dict(cfg, {"model": merged})
    return cfg.model.validate()
