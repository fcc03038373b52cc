"""Checkpoints: safetensors weights + JSON config + optimizer/loader/RNG state, written atomically,
and `load_model`, which every room that reads a trained model calls (eval, serve, and later
surgery and post-training): it sits just above `model` so none of them imports another.

Layout of a run directory:
    RUN/checkpoints/step_000200/{model.safetensors, config.json, tokenizer.json, trainer.pt, state.json}
    RUN/checkpoints/LATEST          <- the name of the newest complete checkpoint
A checkpoint is first written to a temporary folder, every file fsync-ed and its sha256 (read back
from disk) recorded in state.json, the folder renamed into place, and only then LATEST replaced
(os.replace is atomic). A crash at any point leaves LATEST naming the previous, complete
checkpoint. Reading verifies the digests: a damaged checkpoint is one line naming the file, and
in a run directory the newest intact one is used instead, with a note.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as st_load_model
from safetensors.torch import save_model

from adamba.config import Config, config_from_dict
from adamba.data.tokenizer import CONFIG_FILE as TOKENIZER_CONFIG
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.model.lm import LM

WEIGHTS = "model.safetensors"
KEEP_LAST = 2
HASH_CHUNK = 1 << 24  # bytes per read when hashing a file


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


def _write_bytes(path: Path, data: bytes | memoryview) -> None:
    """Write through Python, so a full disk is an OSError naming ENOSPC (torch.save's own writer
    reports it as "unexpected pos ...")."""
    with open(path, "wb") as fh:
        fh.write(data)


def file_digest(path: Path) -> dict:
    """{"sha256", "bytes"} of a file, read back from disk."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(HASH_CHUNK), b""):
            h.update(block)
    return {"sha256": h.hexdigest(), "bytes": path.stat().st_size}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    cfg: Config,
    tokenizer_path: str | Path | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    state: dict | None = None,
    extra: dict | None = None,
) -> Path:
    """Write checkpoint `step` atomically, with the sha256 of every file (read back from disk) in
    its state.json, and point LATEST at it; prune old ones. A failure to write (a full disk, a
    lost mount) is one line naming the folder and the reason; LATEST still names the previous
    checkpoint, which is untouched. `extra` joins the optimizer and RNG state in trainer.pt."""
    ckpt_root = Path(run_dir) / "checkpoints"
    name = f"step_{step:06d}"
    tmp = None
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=ckpt_root))
        save_model(model, str(tmp / WEIGHTS))
        _write_json(tmp / "config.json", cfg.to_dict())
        if tokenizer_path:
            shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
            side = Path(tokenizer_path).with_name(TOKENIZER_CONFIG)  # a foreign tokenizer's specials
            if side.is_file():
                shutil.copyfile(side, tmp / TOKENIZER_CONFIG)
        if optimizer is not None or state is not None:
            buf = io.BytesIO()
            trainer_state = {"optimizer": optimizer.state_dict() if optimizer else None, "rng": rng_state()}
            torch.save({**trainer_state, **(extra or {})}, buf)
            _write_bytes(tmp / "trainer.pt", buf.getbuffer())
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        files = {f.name: file_digest(f) for f in sorted(tmp.iterdir())}
        _write_json(tmp / "state.json", {"step": step, **(state or {}), "files": files})
        with open(tmp / "state.json", "rb") as fh:
            os.fsync(fh.fileno())
        _fsync_dir(tmp)
        final = ckpt_root / name
        if final.exists():
            shutil.rmtree(final)
        _commit(tmp, final, ckpt_root)
    except (OSError, SafetensorError) as e:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
        latest = ckpt_root / "LATEST"
        prev = (
            f"{latest.read_text().strip()} is intact" if latest.is_file() else "no earlier checkpoint exists"
        )
        raise AdambaError(f"cannot save checkpoint {name} in {ckpt_root}: {why} ({prev})") from e
    except BaseException:
        if tmp is not None:
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
    """Keep the newest KEEP_LAST checkpoints (`keep`, just written and verified, among them)."""
    done = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for p in done[:-KEEP_LAST]:
        if p.name != keep:
            shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_root.glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def verify_checkpoint(ckpt: Path, full: bool = True) -> str | None:
    """None if the checkpoint folder is intact, else what is wrong, naming the file. Every file
    listed in state.json must exist with its size and (full) its sha256; without `full`, sizes
    and the safetensors header only (seconds saved on a multi-GB checkpoint). A checkpoint saved
    before digests existed passes if its files are readable."""
    state_file = ckpt / "state.json"
    try:
        state = json.loads(state_file.read_text()) if state_file.is_file() else {}
        if not isinstance(state, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return f"{state_file} is unreadable ({e})"
    files = state.get("files") or {WEIGHTS: None}
    for fname, digest in files.items():
        f = ckpt / fname
        if not f.is_file():
            return f"{f} is missing"
        if digest is None:
            continue
        size = f.stat().st_size
        if size != digest["bytes"]:
            return f"{f} has {size:,} bytes, {digest['bytes']:,} were written (truncated or replaced)"
        if full and file_digest(f)["sha256"] != digest["sha256"]:
            return f"{f} does not match the sha256 recorded when it was written (corrupted)"
    if not full:
        return _check_safetensors_header(ckpt / WEIGHTS)
    return None


def _check_safetensors_header(f: Path) -> str | None:
    """The fast check: the header parses and its last tensor ends where the file does."""
    try:
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{f} has no readable safetensors header ({e})"
    if 8 + n + end != f.stat().st_size:
        return f"{f} is {f.stat().st_size:,} bytes, its header describes {8 + n + end:,} (truncated)"
    return None


def resolve_checkpoint(path: str | Path, full: bool = True) -> Path:
    """A run directory, its checkpoints/ folder, or one checkpoint folder -> an intact checkpoint
    folder. In a run directory: the one LATEST names, or, when that one is missing or damaged,
    the newest intact older one, with a note on stderr saying which and why. A checkpoint folder
    named directly must itself be intact."""
    p = Path(path)
    if not p.exists():
        raise AdambaError(f"checkpoint not found: {p}")
    root = next((r for r in (p / "checkpoints", p) if (r / "LATEST").exists() or any(r.glob("step_*"))), None)
    if root is None:
        if (p / WEIGHTS).is_file() or (p / "state.json").is_file():
            problem = verify_checkpoint(p, full)
            if problem:
                raise AdambaError(f"damaged checkpoint: {problem}")
            return p
        raise AdambaError(
            f"no model weights in {p}: expected {WEIGHTS} or checkpoints/LATEST "
            "(is this a run directory of `adamba train`?)"
        )
    latest = root / "LATEST"
    named = latest.read_text().strip() if latest.is_file() else ""
    steps = sorted((c for c in root.glob("step_*") if c.is_dir()), reverse=True)
    order = ([root / named] if named else []) + [c for c in steps if c.name != named]
    first_problem = "" if named else f"{latest} is missing"
    for cand in order:
        problem = verify_checkpoint(cand, full) if cand.is_dir() else f"{cand} does not exist"
        if problem is None:
            if first_problem:
                print(f"adamba: note: {first_problem}; using {cand}", file=sys.stderr)
            return cand
        first_problem = first_problem or problem
    raise AdambaError(f"no intact checkpoint in {root}: {first_problem or 'none was saved'}")


@dataclass
class Checkpoint:
    path: Path
    cfg: Config
    state: dict

    @property
    def tokenizer_path(self) -> Path | None:
        t = self.path / "tokenizer.json"
        return t if t.is_file() else None


def read_checkpoint(path: str | Path, full: bool = True) -> Checkpoint:
    """The newest intact checkpoint at `path` (see resolve_checkpoint) with its config and state."""
    ckpt = resolve_checkpoint(path, full)
    try:
        cfg = config_from_dict(json.loads((ckpt / "config.json").read_text()))
        state = json.loads((ckpt / "state.json").read_text()) if (ckpt / "state.json").is_file() else {}
    except (OSError, json.JSONDecodeError) as e:
        raise AdambaError(f"{ckpt}: unreadable config.json/state.json ({e})") from e
    return Checkpoint(ckpt, cfg, state)


def load_weights(model: torch.nn.Module, ckpt: Checkpoint, fresh: tuple[str, ...] = ()) -> None:
    """The checkpoint's weights into `model`, every key matched; parameters whose names start
    with a prefix in `fresh` may be missing from the checkpoint and keep their initial values
    (a dense checkpoint starting an elastic run: its heads are new)."""
    try:
        missing, unexpected = st_load_model(model, str(ckpt.path / WEIGHTS), strict=not fresh)
        bad = [k for k in missing if not k.startswith(fresh)] + list(unexpected)
        if bad:
            raise RuntimeError(f"keys not matched: {', '.join(bad[:4])}{' ...' if len(bad) > 4 else ''}")
    except SafetensorError as e:
        first = str(e).strip().splitlines()[0]
        raise AdambaError(f"{ckpt.path / WEIGHTS} is not a readable safetensors file: {first}") from e
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise AdambaError(f"{ckpt.path / WEIGHTS} does not match the model config: {first}") from e


def load_trainer_state(ckpt: Checkpoint) -> dict:
    f = ckpt.path / "trainer.pt"
    if not f.is_file():
        raise AdambaError(
            f"{ckpt.path} has no trainer.pt (optimizer state): it cannot be resumed, only sampled"
        )
    try:
        return torch.load(f, map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise AdambaError(f"{f} is unreadable ({first})") from e


def fresh_out_dir(out: str | Path, overwrite: bool = False) -> Path:
    """`out` as a directory to write a new run into: refused when it holds anything, unless
    `overwrite` (then emptied). What surgery, import and export write their results to."""
    dst = Path(out)
    if dst.exists() and any(dst.iterdir()):
        if not overwrite:
            raise AdambaError(f"{dst} is not empty; choose another --out or pass --overwrite")
        shutil.rmtree(dst)
    return dst


def load_model(ckpt_path: str | Path, tokenizer_path: str | Path | None = None, device: str = "cpu"):
    """(model in eval mode, tokenizer, checkpoint) from a run directory or checkpoint folder.

    The tokenizer defaults to the copy saved inside the checkpoint; a different one must have
    exactly the vocabulary size the model was trained with (an imported tokenizer may have
    fewer: Hugging Face models often pad the embedding to a round size)."""
    ckpt = read_checkpoint(ckpt_path)
    tok_path = tokenizer_path or ckpt.tokenizer_path
    if tok_path is None:
        raise AdambaError(f"{ckpt.path} holds no tokenizer.json; pass --tokenizer PATH")
    if not Path(tok_path).exists():
        raise AdambaError(f"tokenizer not found: {tok_path}")
    tokenizer = Tokenizer.load(tok_path)
    n, n_model = tokenizer.vocab_size, ckpt.cfg.model.vocab_size
    if n > n_model or (n < n_model and not tokenizer.foreign):
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
