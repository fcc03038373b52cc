"""`adamba eval`: run named evaluation tasks on a checkpoint and return printable lines."""

from __future__ import annotations

import torch

from adamba.data.loader import TokenLoader
from adamba.errors import AdambaError
from adamba.eval.bpb import evaluate_bpb
from adamba.serve.generate import load_model

TASKS = ("bpb",)


def run_eval(ckpt_path: str, tasks: list[str], data: list[str] | None = None, batches: int = 50) -> list[str]:
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
        res = evaluate_bpb(model, (next(loader) for _ in range(batches)), tb)
        lines.append(
            f"bpb: val loss {res['loss']:.4f}  bits/byte {res['bpb']:.4f}  ({res['tokens']:,} tokens)"
        )
    return lines
