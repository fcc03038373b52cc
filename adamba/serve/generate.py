"""Load a trained checkpoint with its tokenizer and generate text from a prompt."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.model.lm import LM
from adamba.train import checkpoint as ck


def load_model(ckpt_path: str | Path, tokenizer_path: str | Path | None = None, device: str = "cpu"):
    """(model in eval mode, tokenizer, checkpoint) from a run directory or checkpoint folder.

    The tokenizer defaults to the copy saved inside the checkpoint; a different one must have
    exactly the vocabulary size the model was trained with."""
    ckpt = ck.read_checkpoint(ckpt_path)
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
    ck.load_weights(model, ckpt)
    return model.to(device).eval(), tokenizer, ckpt


def generate_text(
    model: LM,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int | None = None,
    mode: str | None = None,
    stats: dict | None = None,
) -> Iterator[str]:
    """Yield decoded text pieces as they are generated (stops at end-of-sequence).

    `mode` (ghost / whisper / normal / think / auto) decodes through the elastic runner of a
    Matryoshka-trained model; `stats` then receives its per-token accounting summary."""
    device = next(model.parameters()).device
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out: list[int] = []
    shown = ""
    stop = {tokenizer.eos_id, tokenizer.bos_id}
    runners: list = []
    if mode is not None:
        from adamba.model import elastic

        tokens = elastic.generate(model, idx, mode, max_new_tokens, temperature, top_k, stop, gen, runners)
    else:
        tokens = model.generate(idx, max_new_tokens, temperature, top_k, stop, gen)
    for nxt in tokens:
        t = int(nxt[0])
        if t in (tokenizer.eos_id, tokenizer.bos_id):
            break
        out.append(t)
        text = tokenizer.decode(out)
        if not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
            yield text[len(shown) :]
            shown = text
    if runners and stats is not None:
        r = runners[0]
        stats.update(r.stats.summary(len(model.blocks)))
        stats["kv_bytes"], stats["kv_bytes_full"] = r.kv_bytes()
        stats["widths"] = r.widths
