"""Checkpoints: safetensors weights + JSON config + optimizer/loader/RNG state, written atomically,
and `load_model`, which every room that reads a trained model calls (eval, serve, and later
surgery and post-training): it sits just above `model` so none of them imports another.

Layout of a run directory:
    RUN/checkpoints/step_000200/{model.safetensors, config.json, tokenizer.json, trainer.pt, state.json}
    RUN/checkpoints/LATEST          <- the name of the newest complete checkpoint
A checkpoint is first written to a temporary folder, every file fsync-ed, the folder renamed into
place, and only then LATEST replaced (os.replace is atomic). A crash at any point leaves LATEST
naming the previous, complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model

from adamba.config import Config, config_from_dict
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.model.lm import LM

WEIGHTS = "model.safetensors"
KEEP_LAST = 2


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2))


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    cfg: Config,
    tokenizer_path: str | Path | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict | None = None,
) -> Path:
    """Write checkpoint `step` atomically and point LATEST at it; prune old ones."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=ckpt_root))
    try:
        save_model(model, str(tmp / WEIGHTS))
        _write_json(tmp / "config.json", cfg.to_dict())
        if tokenizer_path:
            shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
        if optimizer is not None or state is not None:
            torch.save(
                {"optimizer": optimizer.state_dict() if optimizer else None, "rng": rng_state()},
                tmp / "trainer.pt",
            )
        _write_json(tmp / "state.json", {"step": step, **(state or {})})
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        _commit(tmp, final, ckpt_root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(ckpt_root, keep=name)
    return final


def _commit(tmp: Path, final: Path, ckpt_root: Path) -> None:
    """The two atomic renames that publish a checkpoint (separate so tests can inject a fault)."""
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    latest_tmp = ckpt_root / ".LATEST.tmp"
    latest_tmp.write_text(final.name)
    with open(latest_tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(latest_tmp, ckpt_root / "LATEST")
    _fsync_dir(ckpt_root)


def _prune(ckpt_root: Path, keep: str) -> None:
    done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for p in done[:-KEEP_LAST]:
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def resolve_checkpoint(path: str | Path) -> Path:
    """A run directory, its checkpoints/ folder, or one checkpoint folder -> the checkpoint folder."""
    p = Path(path)
    if not p.exists():
        raise AdambaError(f"checkpoint not found: {p}")
    for root in (p / "checkpoints", p):
        latest = root / "LATEST"
        if latest.is_file():
            cand = root / latest.read_text().strip()
            if (cand / WEIGHTS).is_file():
                return cand
            raise AdambaError(
                f"{latest} names {cand.name}, which has no {WEIGHTS}; the checkpoint is incomplete"
            )
    if (p / WEIGHTS).is_file():
        return p
    raise AdambaError(
        f"no model weights in {p}: expected {WEIGHTS} or checkpoints/LATEST (is this a run directory of `adamba train`?)"
    )


@dataclass
class Checkpoint:
    path: Path
    cfg: Config
    state: dict

    @property
    def tokenizer_path(self) -> Path | None:
        t = self.path / "tokenizer.json"
        return t if t.is_file() else None


def read_checkpoint(path: str | Path) -> Checkpoint:
    ckpt = resolve_checkpoint(path)
    try:
        cfg = config_from_dict(json.loads((ckpt / "config.json").read_text()))
        state = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise AdambaError(f"{ckpt}: unreadable config.json/state.json ({e})") from e
    return Checkpoint(ckpt, cfg, state)


def load_weights(model: torch.nn.Module, ckpt: Checkpoint) -> None:
    try:
        st_load_model(model, str(ckpt.path / WEIGHTS), strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise AdambaError(f"{ckpt.path / WEIGHTS} does not match the model config: {first}") from e


def load_trainer_state(ckpt: Checkpoint) -> dict:
    f = ckpt.path / "trainer.pt"
    if not f.is_file():
        raise AdambaError(
            f"{ckpt.path} has no trainer.pt (optimizer state): it cannot be resumed, only sampled"
        )
    return torch.load(f, map_location="cpu", weights_only=False)


def load_model(ckpt_path: str | Path, tokenizer_path: str | Path | None = None, device: str = "cpu"):
    """(model in eval mode, tokenizer, checkpoint) from a run directory or checkpoint folder.

    The tokenizer defaults to the copy saved inside the checkpoint; a different one must have
    exactly the vocabulary size the model was trained with."""
    ckpt = read_checkpoint(ckpt_path)
    tok_path = tokenizer_path or ckpt.tokenizer_path
    if tok_path is None:
        raise AdambaError(f"{ckpt.path} holds no tokenizer.json; pass --tokenizer PATH")
    if not Path(tok_path).exists():
        raise AdambaError(f"tokenizer not found: {tok_path}")
    tokenizer = Tokenizer.load(tok_path)
    if tokenizer.vocab_size != ckpt.cfg.model.vocab_size:
        raise AdambaError(
            f"tokenizer {tok_path} has {tokenizer.vocab_size} tokens but the checkpoint {ckpt.path} expects "
            f"{ckpt.cfg.model.vocab_size}; use the tokenizer the model was trained with"
        )
    model = LM(ckpt.cfg.model)
    if ckpt.cfg.elastic.enabled:  # gate + predictor weights are part of the checkpoint
        from adamba.model.elastic import attach_elastic

        attach_elastic(model, ckpt.cfg.elastic)
    load_weights(model, ckpt)
    return model.to(device).eval(), tokenizer, ckpt
