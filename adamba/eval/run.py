"""`adamba eval`: run named evaluation tasks on a checkpoint and return printable lines."""

from __future__ import annotations

import torch

from adamba.checkpoint import load_model
from adamba.data.loader import TokenLoader
from adamba.errors import AdambaError
from adamba.eval.bpb import evaluate_bpb

TASKS = ("bpb", "efficiency")
EFFICIENCY_MAX_SEQS = 8  # token-by-token decoding of every mode is slow: a few sequences
EFFICIENCY_LEN, EFFICIENCY_PROMPT = 128, 16


def run_eval(
    ckpt_path: str, tasks: list[str], data: list[str] | None = None, batches: int = 50, decode_batch: int = 1
) -> list[str]:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise AdambaError(f"unknown eval task(s) {', '.join(unknown)}; available: {', '.join(TASKS)}")
    model, tokenizer, ckpt = load_model(ckpt_path)
    lines = [f"checkpoint {ckpt.path} (step {ckpt.state.get('step', '?')}, {model.num_params():,} params)"]
    if "bpb" in tasks:
        val = data or ckpt.cfg.data.val
        if not val:
            raise AdambaError("no validation data: pass --data MANIFEST (the run has no data.val)")
        loader = TokenLoader(
            val,
            ckpt.cfg.train.batch_size,
            ckpt.cfg.data.seq_len,
            seed=0,
            tokenizer_fingerprint=tokenizer.fingerprint(),
        )
        tb = torch.as_tensor(tokenizer.token_bytes(), dtype=torch.long)
        try:
            res = evaluate_bpb(model, (next(loader) for _ in range(batches)), tb)
        finally:
            loader.close()  # stop its prefetch thread now, not at interpreter exit
        lines.append(
            f"bpb: val loss {res['loss']:.4f}  bits/byte {res['bpb']:.4f}  ({res['tokens']:,} tokens)"
        )
    if "efficiency" in tasks:
        lines += efficiency_lines(model, tokenizer, ckpt, data, batches, decode_batch)
    return lines


def efficiency_lines(model, tokenizer, ckpt, data, batches, decode_batch: int = 1) -> list[str]:
    """Per compute mode, decoding held-out sequences token by token (`decode_batch` sequences
    together, KV cache): val bits/byte of the continuation after a 16-token prompt, FLOPs per
    token relative to the full model, early-exit and expansion rates, exit-layer histogram,
    decode tokens/s. At batch 1 a small model's step is dispatch overhead, the same at every
    width; a batch is what shows the widths' speed difference."""
    import math

    from adamba.model import elastic as el

    ecfg = el.model_ecfg(model)
    if decode_batch < 1:
        raise AdambaError(f"--decode-batch {decode_batch} must be >= 1")
    val = data or ckpt.cfg.data.val
    if not val:
        raise AdambaError("no validation data: pass --data MANIFEST (the run has no data.val)")
    length = min(EFFICIENCY_LEN, ckpt.cfg.data.seq_len)
    loader = TokenLoader(val, 1, length, seed=0, tokenizer_fingerprint=tokenizer.fingerprint())
    seqs = []
    try:
        for _ in range(max(1, min(batches, EFFICIENCY_MAX_SEQS), decode_batch)):
            x, y = next(loader)
            seqs.append(torch.cat([x[0], y[0, -1:]]))
    finally:
        loader.close()  # its prefetch thread would run on through the whole decode
    tb = torch.as_tensor(tokenizer.token_bytes(), dtype=torch.long)
    lines = [
        f"efficiency: {len(seqs)} sequences x {length} tokens, prompt {EFFICIENCY_PROMPT}, "
        f"decode batch {decode_batch}"
    ]
    lines.append(
        f"{'mode':>8} {'bpb':>7} {'FLOPs':>6} {'exit':>6} {'expand':>6} {'tok/s':>7}  exit-layer histogram"
    )
    for mode in el.MODES:
        ce, tgt, _, s, secs = el.teacher_forced(
            model, ecfg, el.mode_policy(mode, model, ecfg), seqs, EFFICIENCY_PROMPT, decode_batch
        )
        b = tb[tgt]
        bpb = float((ce * (b > 0)).sum()) / (math.log(2) * max(1, int(b.sum())))
        lines.append(
            f"{mode:>8} {bpb:7.4f} {s['flops_rel']:6.3f} {s['exit_rate']:6.3f} {s['expand_rate']:6.3f} "
            f"{s['tokens'] / max(1e-9, secs):7.1f}  {s['exit_hist']}"
        )
    return lines
