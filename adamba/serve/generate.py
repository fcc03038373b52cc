"""Generate text from a prompt with a loaded model (`adamba.checkpoint.load_model`)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from adamba.data.tokenizer import Tokenizer
from adamba.model import decode
from adamba.model.lm import LM


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
        from adamba.model import elastic_runner

        tokens = elastic_runner.generate(
            model, idx, mode, max_new_tokens, temperature, top_k, stop, gen, runners
        )
    else:
        tokens = decode.generate(model, idx, max_new_tokens, temperature, top_k, stop, gen)
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
