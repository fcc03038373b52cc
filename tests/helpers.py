"""Small real corpora and configs shared by tests (no dependency on ../shared)."""

from __future__ import annotations

import subprocess
import sys
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


def adamba(*args, cwd=None) -> subprocess.CompletedProcess:
    """Run the `adamba` command in a fresh interpreter, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "adamba", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def assert_clean_error(res, *needles) -> None:
    """A user mistake: exit code 2 and one line on stderr naming the problem, no traceback."""
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


WIDTHS = [0.125, 0.25, 0.5, 1.0]  # the Matryoshka widths of the elastic tests


def elastic_config(**kw) -> ModelConfig:
    """The elastic tests' model: 3 layers, 8 query heads of 8 over 2 KV heads (GQA groups of 4),
    so every width in WIDTHS keeps a different head count."""
    base = dict(
        vocab_size=97,
        d_model=64,
        n_layer=3,
        attn={"n_head": 8, "n_kv_head": 2, "head_dim": 8},
        max_seq_len=64,
    )
    return model_config(base, **kw)


def elastic_overrides(data: dict, out: Path, steps: int = 8) -> list[str]:
    """tiny_overrides for a Matryoshka run, with a short gate-calibration phase."""
    return tiny_overrides(data, out, steps) + [
        "model.d_model=64",
        "model.attn.n_head=4",
        "model.attn.n_kv_head=2",
        "elastic.enabled=true",
        "elastic.widths=[0.25, 0.5, 1.0]",
        "elastic.exit_token_frac=0.5",
        "elastic.calibrate_steps=2",
        "train.eval_every=0",
    ]


HYBRID = [  # M A M: two Mamba2 layers (no feed-forward) around an attention layer with MLP
    "model.n_layer=3",
    "model.pattern=MAM",
    "model.mamba.ffn=none",
    "model.mamba.d_state=16",
    "model.mamba.head_dim=16",
    "model.mamba.chunk_size=16",
]

# a 3-phase run whose trainable set changes between phases
THREE_PHASES = """
[[phase]]
name = "all"
steps = {s0}

[[phase]]
name = "mamba-only"
steps = {s1}
train = ["@M"]
lr = 5e-3
schedule = "constant"
reset_optimizer = {reset}

[[phase]]
name = "attn-only"
steps = {s2}
train = ["*"]
freeze = ["@M"]
schedule = "cosine"
warmup_frac = 0.0
"""


def three_phase_config(tmp_path, data, out, reset=False, extra=(), steps=(3, 3, 3)):
    """THREE_PHASES over the HYBRID tiny model on `data`, into `out`."""
    from adamba.config import load_config

    path = tmp_path / "phases.toml"
    s0, s1, s2 = steps
    path.write_text(THREE_PHASES.format(reset=str(reset).lower(), s0=s0, s1=s1, s2=s2))
    over = tiny_overrides(data, out) + HYBRID + ["train.eval_every=0", "train.ckpt_every=0", *extra]
    return load_config(str(path), over)


def nan_loss_on(monkeypatch, bad) -> None:
    """Make the training loss NaN on the training forwards n = 1, 2, ... for which bad(n)."""
    import torch

    from adamba.model.lm import LM

    real = LM.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, *a, **k):
        logits, loss = real(self, idx, targets, *a, **k)
        if targets is not None and torch.is_grad_enabled():
            calls["n"] += 1
            if bad(calls["n"]):
                loss = loss * float("nan")
        return logits, loss

    monkeypatch.setattr(LM, "forward", forward)
