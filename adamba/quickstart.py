"""`adamba quickstart`: the whole pipeline, offline, in minutes on a CPU.

Corpus (the running Python's standard library source, or the user's --data files) -> curate
(normalise, dedup, filters) -> split by document -> train a BPE tokenizer -> token shards ->
train the tiny model for a time budget -> evaluate bits-per-byte against the unigram baseline ->
sample -> report.md with a loss curve. Every stage is the same code `adamba data ...` and
`adamba train` run.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from adamba.checkpoint import load_model
from adamba.config import Config, load_config
from adamba.data.curate import CurateConfig, curate_documents
from adamba.data.loader import TokenLoader
from adamba.data.shards import load_tokens, read_manifest, write_shards
from adamba.data.sources import Document, python_stdlib_documents, read_documents
from adamba.data.tokenizer import N_SPECIAL, Tokenizer
from adamba.errors import AdambaError
from adamba.eval.bpb import evaluate_bpb, unigram_bpb
from adamba.serve.generate import generate_text
from adamba.train import rundir, trainer
from adamba.train.monitor import read_metrics

VAL_PERCENT = 5  # documents whose id hashes below this percentile go to validation
TOKENIZER_SAMPLE_MB = 4.0  # text the tokenizer is trained on (more adds time, little compression)
DEFAULT_PROMPTS = ["def ", "import os\n\n", "class Config:\n    "]


def _is_val(doc: Document) -> bool:
    h = hashlib.sha256(f"{doc.source}:{doc.id}".encode()).digest()
    return int.from_bytes(h[:4], "little") % 100 < VAL_PERCENT


def _take_mb(docs: list[Document], mb: float) -> list[Document]:
    out, n = [], 0
    for d in docs:
        if n >= mb * 1e6:
            break
        out.append(d)
        n += len(d.text.encode())
    return out


def split_corpus(docs: list[Document]) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents (files), so validation text was never seen in any form."""
    train = [d for d in docs if not _is_val(d)]
    val = [d for d in docs if _is_val(d)]
    if not val and len(train) > 1:
        val = [train.pop()]
    if not train or not val:
        raise AdambaError("the corpus needs at least two usable documents (one is held out for validation)")
    return train, val


def check_args(
    out: str | Path,
    minutes: float,
    config: str,
    overrides: list[str] | None,
    max_corpus_mb: float,
    overwrite: bool = False,
) -> Config:
    """Everything the user chose, checked before the corpus is read (minutes of work): the
    budget (NaN passes `minutes <= 0`), the output folder (an empty name would be the current
    directory; an earlier quickstart's run there is kept unless `overwrite`), the config, and a
    vocabulary the byte-level tokenizer can have. Returns the config."""
    if not (math.isfinite(minutes) and minutes > 0):
        raise AdambaError(f"--minutes {minutes} must be a finite number > 0")
    if not (math.isfinite(max_corpus_mb) and max_corpus_mb > 0):
        raise AdambaError(f"max_corpus_mb={max_corpus_mb} must be a finite number > 0")
    if not str(out).strip():
        raise AdambaError("--out is empty: name the output directory")
    if Path(out).exists() and not Path(out).is_dir():
        raise AdambaError(f"--out {out} is a file, not a directory")
    found = rundir.existing_run(Path(out) / "run")
    if found and not overwrite:
        raise AdambaError(
            f"{out} already holds a quickstart run ({', '.join(found)}); give another --out, "
            "or --overwrite to replace it"
        )
    cfg = load_config(config, overrides)
    if cfg.model.vocab_size < N_SPECIAL + 256:
        raise AdambaError(
            f"model.vocab_size={cfg.model.vocab_size} is too small for the byte-level tokenizer: "
            f"use at least {N_SPECIAL + 256} (256 bytes + {N_SPECIAL} special tokens)"
        )
    return cfg


@dataclass
class Prepared:
    """What the data stages made: the tokenizer and the train / val manifests."""

    tokenizer: Path
    train: Path
    val: Path
    train_docs: list
    val_docs: list
    curation: object


def prepare_data(
    out: Path,
    data: list[str] | None,
    vocab_size: int,
    max_corpus_mb: float = 16.0,
    curate_preset: str | None = None,
    console: Console | None = None,
    steps: int = 6,
) -> Prepared:
    """Stages 1-3 (corpus + curation, tokenizer, shards) into `out`: the stdlib corpus or the
    user's `data`, whole documents held out for validation. Shared by quickstart and grow."""
    console = console or Console(stderr=True, quiet=True)
    # 1. corpus and curation, all in memory: a bad corpus fails before anything is written
    console.print(
        f"[bold]1/{steps} corpus[/]", "from " + (", ".join(data) if data else "the Python standard library")
    )
    # a user's single big text file becomes ~300-word documents (split at blank lines)
    raw = list(read_documents(data, chunk_words=300) if data else python_stdlib_documents())
    ccfg = CurateConfig.preset(curate_preset or ("dedup" if data else "code"))
    kept, cur = curate_documents(raw, ccfg)
    kept = list(kept)
    if not kept:
        where = ", ".join(data) if data else "the standard library"
        raise AdambaError(f"no usable text in {where}: {len(raw)} documents read, none survived curation")
    train_docs, val_docs = split_corpus(kept)
    train_docs = _take_mb(train_docs, max_corpus_mb)
    val_docs = _take_mb(val_docs, max_corpus_mb * VAL_PERCENT / 100)
    n_train_mb = sum(len(d.text.encode()) for d in train_docs) / 1e6
    console.print(
        f"    {len(raw)} docs read, {len(kept)} kept; train {len(train_docs)} docs ({n_train_mb:.1f} MB), val {len(val_docs)}"
    )

    # 2. tokenizer
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]2/{steps} tokenizer[/] byte-level BPE, vocab {vocab_size}")
    tok = Tokenizer.train((d.text for d in _take_mb(train_docs, TOKENIZER_SAMPLE_MB)), vocab_size)
    tok_path = out / "tokenizer.json"
    tok.save(tok_path)

    # 3. shards
    console.print(f"[bold]3/{steps} shards[/]")
    train_manifest = write_shards(train_docs, tok, out / "data" / "train", source="quickstart-train")
    val_manifest = write_shards(val_docs, tok, out / "data" / "val", source="quickstart-val")

    return Prepared(tok_path, train_manifest, val_manifest, train_docs, val_docs, cur)


class _AtWidth(torch.nn.Module):
    """The model run at one Matryoshka width in every layer (what evaluate_bpb calls)."""

    def __init__(self, model, width: float):
        super().__init__()
        self.model, self.width = model, width

    def forward(self, x):
        return self.model(x, widths=[self.width] * self.model.cfg.n_layer)


def held_out_bpb(
    model, tok, val_manifest: Path, batch_size: int, seq_len: int, max_batches: int = 40, width: float = 1.0
) -> dict:
    """Bits per byte on the first `max_batches` held-out batches (fewer if the split is smaller),
    the same batches every call: stages of a run are compared on identical text."""
    n_val = sum(s.tokens for s in read_manifest(val_manifest))
    n_batches = max(1, min(max_batches, n_val // (batch_size * seq_len)))
    vl = TokenLoader([str(val_manifest)], batch_size, seq_len, seed=0)
    scored = model if width >= 1.0 else _AtWidth(model, width)
    token_bytes = torch.as_tensor(tok.token_bytes(), dtype=torch.long)
    return evaluate_bpb(scored, (next(vl) for _ in range(n_batches)), token_bytes)


def quickstart(
    out: str | Path = "runs/quickstart",
    minutes: float = 5.0,
    data: list[str] | None = None,
    config: str = "tiny-cpu",
    overrides: list[str] | None = None,
    progress: bool = True,
    max_corpus_mb: float = 16.0,
    curate_preset: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Run the pipeline; returns the path of report.md. `overwrite`: replace an earlier run in
    `out` (otherwise refused before any work)."""
    console = Console(stderr=True, quiet=not progress)
    t_start = time.time()
    cfg = check_args(out, minutes, config, overrides, max_corpus_mb, overwrite)
    out = Path(out)

    prep = prepare_data(out, data, cfg.model.vocab_size, max_corpus_mb, curate_preset, console, steps=6)
    tok_path, train_manifest, val_manifest = prep.tokenizer, prep.train, prep.val
    train_docs, val_docs, cur = prep.train_docs, prep.val_docs, prep.curation
    t_data = time.time() - t_start

    # 4. train
    console.print(f"[bold]4/6 train[/] {config} for about {minutes:g} min")
    cfg.data.train, cfg.data.val, cfg.data.tokenizer = (
        [str(train_manifest)],
        [str(val_manifest)],
        str(tok_path),
    )
    cfg.train.max_minutes = minutes
    cfg.run.out_dir = str(out / "run")
    cfg.run.progress = progress
    res = trainer.run(cfg, overwrite=overwrite)

    # 5. evaluate against the unigram baseline on the same validation text
    console.print("[bold]5/6 evaluate[/]")
    model, tok, _ = load_model(out / "run")
    token_bytes = tok.token_bytes()
    train_tokens = np.concatenate([load_tokens(s) for s in read_manifest(train_manifest)])
    val_tokens = np.concatenate([load_tokens(s) for s in read_manifest(val_manifest)])
    uni = unigram_bpb(train_tokens, val_tokens, token_bytes)
    final = held_out_bpb(model, tok, val_manifest, cfg.train.batch_size, cfg.data.seq_len)

    # 6. samples and report
    console.print("[bold]6/6 samples + report[/]")
    prompts = DEFAULT_PROMPTS if not data else [d.text[:40] for d in val_docs[:3]]
    samples = ["".join(generate_text(model, tok, p, 96, 0.8, 50, seed=i)) for i, p in enumerate(prompts)]
    summary = {
        "config": config,
        "params": model.num_params(),
        "steps": res.steps,
        "tokens_seen": res.tokens_seen,
        "tokens_per_s": res.tokens_per_s,
        "train_seconds": res.elapsed_s,
        "data_seconds": t_data,
        "total_seconds": time.time() - t_start,
        "val_bpb": final["bpb"],
        "val_loss": final["loss"],
        "unigram_bpb": uni,
        "bpb_ratio": final["bpb"] / uni,
        "curation": cur.to_dict() if hasattr(cur, "to_dict") else str(cur),
        "train_docs": len(train_docs),
        "val_docs": len(val_docs),
        "val_tokens_scored": final["tokens"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    plot = _plot_losses(read_metrics(out / "run" / "metrics.jsonl"), out / "loss.png", final["bpb"], uni)
    report = _write_report(out, cfg, summary, prompts, samples, plot)
    console.print(
        f"val bpb {final['bpb']:.3f} vs unigram {uni:.3f} (ratio {final['bpb'] / uni:.2f}); "
        f"{summary['total_seconds'] / 60:.1f} min total"
    )
    return report


def _plot_losses(rows: list[dict], path: Path, val_bpb: float, uni: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="train loss", lw=1)
    ev = [r for r in rows if "val_loss" in r]
    if ev:
        ax.plot([r["step"] for r in ev], [r["val_loss"] for r in ev], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(f"final val {val_bpb:.3f} bits/byte; unigram baseline {uni:.3f}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write_report(out: Path, cfg, s: dict, prompts: list[str], samples: list[str], plot: Path) -> Path:
    m = cfg.model
    lines = [
        "# adamba quickstart report",
        "",
        f"- model: `{s['config']}`, {s['params']:,} parameters (d_model {m.d_model}, {m.n_layer} layers, pattern `{m.pattern}`, vocab {m.vocab_size})",
        f"- training: {s['steps']} steps, {s['tokens_seen']:,} tokens, {s['tokens_per_s']:,.0f} tokens/s, {s['train_seconds']:.0f} s",
        f"- data preparation: {s['data_seconds']:.0f} s; whole run {s['total_seconds']:.0f} s",
        f"- corpus: {s['train_docs']} training documents, {s['val_docs']} held-out documents",
        "",
        "## Validation",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| val loss (nats/token) | {s['val_loss']:.4f} |",
        f"| val bits per byte | {s['val_bpb']:.4f} |",
        f"| unigram bits per byte (same val text) | {s['unigram_bpb']:.4f} |",
        f"| ratio model / unigram | {s['bpb_ratio']:.3f} |",
        "",
        f"![loss curve]({plot.name})",
        "",
        "## Samples",
        "",
    ]
    for p, smp in zip(prompts, samples):
        lines += ["```", p + smp, "```", ""]
    lines += ["## Config", "", "```json", json.dumps(cfg.to_dict(), indent=2), "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
