"""Generate text from a prompt with a loaded model (`adamba.checkpoint.load_model`)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.model import decode
from adamba.model.lm import LM


def check_generate_args(
    prompt: str, max_new_tokens: int, temperature: float, top_k: int | None, seed: int | None = None
) -> None:
    """Decoding settings, checked before any work and named as `adamba sample`'s flags. Each
    would fail late or quietly: a NaN temperature passes `temperature <= 0` and breaks sampling,
    a negative top-k fails inside torch.topk, a seed outside [0, 2**63) in torch's generator, and
    a prompt holding bytes that are not UTF-8 (a shell passes them to Python as surrogate
    escapes) inside the tokenizer."""
    if max_new_tokens < 1:
        raise AdambaError(f"--max-new-tokens {max_new_tokens} must be >= 1")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise AdambaError(f"--temperature {temperature} must be a finite number >= 0 (0 = greedy)")
    if top_k is not None and top_k < 0:
        raise AdambaError(f"--top-k {top_k} must be >= 0 (0 = no top-k filtering)")
    if seed is not None and not 0 <= seed < 2**63:
        raise AdambaError(f"--seed {seed} must lie in [0, 2**63)")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(prompt[e.start])
        what = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"character U+{c:04X}"
        raise AdambaError(
            f"--prompt is not valid UTF-8 text ({what} at position {e.start}); pass the prompt as UTF-8"
        ) from e


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
    check_generate_args(prompt, max_new_tokens, temperature, top_k, seed)
    ids = [tokenizer.bos_id] + tokenizer.encode(prompt)
    stop = {tokenizer.eos_id, tokenizer.bos_id}
    yield from stream_text(model, tokenizer, ids, max_new_tokens, temperature, top_k, seed, mode, stop, stats)


def stream_text(
    model: LM,
    tokenizer: Tokenizer,
    ids: list[int],
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    seed: int | None,
    mode: str | None,
    stop: set[int],
    stats: dict | None = None,
    out: list[int] | None = None,
) -> Iterator[str]:
    """Continue the token ids `ids`, yielding text pieces that never split a UTF-8 character,
    until a token of `stop` (not yielded) or `max_new_tokens`; the new ids are appended to `out`."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device)
    if seed is not None:
        gen.manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = [] if out is None else out
    first, shown = len(out), ""
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
        if t in stop:
            break
        out.append(t)
        text = tokenizer.decode(out[first:])
        if not text.endswith("\ufffd"):  # wait for a complete UTF-8 character
            yield text[len(shown) :]
            shown = text
    if runners and stats is not None:
        r = runners[0]
        stats.update(r.stats.summary(len(model.blocks)))
        stats["kv_bytes"], stats["kv_bytes_full"] = r.kv_bytes()
        stats["widths"] = r.widths
