"""`adamba eval`: run named evaluation tasks on a checkpoint and return printable lines."""

from __future__ import annotations

import torch

from adamba.checkpoint import load_model
from adamba.data.loader import TokenLoader
from adamba.errors import AdambaError
from adamba.eval.bpb import evaluate_bpb
from adamba.eval.efficiency import efficiency_lines

TASKS = ("bpb", "efficiency")


def run_eval(
    ckpt_path: str, tasks: list[str], data: list[str] | None = None, batches: int = 50, decode_batch: int = 1
) -> list[str]:
    """Every argument is checked before the checkpoint is read (named as `adamba eval`'s flags):
    0 batches would score nothing and print a bits/byte of 0."""
    tasks = [t.strip() for t in tasks if t.strip()]
    if not tasks:
        raise AdambaError(f"--tasks is empty; available: {', '.join(TASKS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise AdambaError(f"unknown eval task(s) {', '.join(unknown)}; available: {', '.join(TASKS)}")
    if batches < 1:
        raise AdambaError(f"--batches {batches} must be >= 1")
    if decode_batch < 1:
        raise AdambaError(f"--decode-batch {decode_batch} must be >= 1")
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
