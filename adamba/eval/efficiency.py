"""Elastic efficiency: score compute modes and the exit rule on held-out text.

`teacher_forced` decodes sequences token by token through the `ElasticRunner` under a policy and
returns per-token losses and the runner's FLOPs accounting; `batched_exits` replays early-exit
decoding over whole sequences in n_layer batched passes (the same decisions and logits, tests),
which is how the benchmark scores the exit rule on a whole validation split; `efficiency_lines`
is `adamba eval --tasks efficiency`.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from adamba.config import ElasticConfig
from adamba.data.loader import TokenLoader
from adamba.errors import AdambaError
from adamba.eval.bpb import bits_per_byte
from adamba.model import elastic as el
from adamba.model.elastic import Policy
from adamba.model.elastic_runner import ElasticRunner, TokenStats

EFFICIENCY_MAX_SEQS = 8  # token-by-token decoding of every mode is slow: a few sequences
EFFICIENCY_LEN, EFFICIENCY_PROMPT = 128, 16


def sync(t: torch.Tensor) -> None:
    """Wait for the device's queued work (timings on a GPU); a no-op on a CPU."""
    if t.is_cuda:
        torch.cuda.synchronize(t.device)


@torch.no_grad()
def batched_exits(
    model, idx: torch.Tensor, widths: list[float], threshold: float, start: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Early-exit decoding of whole sequences in n_layer batched passes, exactly as
    ElasticRunner decodes them token by token (tests check it): layer j's output for a token
    depends only on layer-j K/V of earlier tokens, so every token's gate decision at layer j is
    known once layer j has run for all. Positions before `start` (the prompt) never exit.
    Returns (final hidden [B, T, d]: exited tokens keep their exit state; exit layer [B, T],
    n_layer - 1 = ran every layer). Used to score the exit rule on a whole validation split."""
    L = len(model.blocks)
    x = model.embed(idx)
    exit_at = torch.full(idx.shape, L - 1, device=idx.device)
    may_exit = (torch.arange(idx.shape[1], device=idx.device) >= start).expand_as(exit_at)
    frozen = x
    for j, (block, w) in enumerate(zip(model.blocks, widths)):
        x = block(x, None, w)
        x = torch.where((exit_at < j)[..., None], frozen, x)  # exited: copy-forward input
        if j < L - 1:
            g = torch.sigmoid(model.elastic.gate_logit(j, x, w))
            go = may_exit & (exit_at == L - 1) & (g > threshold)
            exit_at = torch.where(go, j, exit_at)
            frozen = torch.where(go[..., None], x, frozen)
    return x, exit_at


@torch.no_grad()
def teacher_forced(
    model, ecfg: ElasticConfig, policy: Policy, seqs: list[torch.Tensor], prompt_len: int, batch: int = 1
):
    """Score each sequence's continuation token by token under a policy, decoding `batch`
    sequences together (sequences of one length; the last group may be smaller).
    Returns (per-token CE in nats [N], target ids [N], argmax ids [N], stats summary, decode
    seconds), tokens in sequence order. The first continuation token is scored from the
    prefill (no step stats)."""
    ces, tgts, preds = [], [], []
    stats = TokenStats()
    seconds = 0.0
    if batch > 1 and len({len(q) for q in seqs}) > 1:
        raise AdambaError("batched scoring needs sequences of one length")
    for g in range(0, len(seqs), batch):
        grp = torch.stack(seqs[g : g + batch])
        B, n = grp.shape
        r = ElasticRunner(model, ecfg, policy, batch=B)
        logits = r.prefill(grp[:, :prompt_len])
        step_ce, step_pred = [], []
        for t in range(prompt_len, n):
            step_ce.append(F.cross_entropy(logits.float(), grp[:, t], reduction="none"))
            step_pred.append(logits.argmax(-1))
            if t + 1 < n:
                sync(grp)
                t0 = time.perf_counter()  # decode steps only: tokens/s of generation
                logits = r.step(grp[:, t : t + 1])
                sync(grp)  # a GPU's queued kernels count too
                seconds += time.perf_counter() - t0
        ces.append(torch.stack(step_ce, 1).flatten())  # [B, steps] -> row-major: sequence order
        preds.append(torch.stack(step_pred, 1).flatten())
        tgts.append(grp[:, prompt_len:].flatten())
        per_row = r.rows_mode or B == 1  # fixed-width batches log one stats entry per step
        for name in ("flops", "full_flops", "head_flops", "exit_layer", "expanded", "widths"):
            vals = getattr(r.stats, name)
            if per_row:  # step-major [steps x B] -> sequence order
                vals = [vals[k * B + b] for b in range(B) for k in range(len(vals) // B)]
            else:
                vals = [v for _ in range(B) for v in vals]  # every row costs the same
            getattr(stats, name).extend(vals)
    return torch.cat(ces), torch.cat(tgts), torch.cat(preds), stats.summary(len(model.blocks)), seconds


def efficiency_lines(model, tokenizer, ckpt, data, batches, decode_batch: int = 1) -> list[str]:
    """Per compute mode, decoding held-out sequences token by token (`decode_batch` sequences
    together, KV cache): val bits/byte of the continuation after a 16-token prompt, FLOPs per
    token relative to the full model, early-exit and expansion rates, exit-layer histogram,
    decode tokens/s. At batch 1 a small model's step is dispatch overhead, the same at every
    width; a batch is what shows the widths' speed difference."""
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
        ce, tgt, _, s, secs = teacher_forced(
            model, ecfg, el.mode_policy(mode, model, ecfg), seqs, EFFICIENCY_PROMPT, decode_batch
        )
        bpb = bits_per_byte(ce, tgt, tb)
        lines.append(
            f"{mode:>8} {bpb:7.4f} {s['flops_rel']:6.3f} {s['exit_rate']:6.3f} {s['expand_rate']:6.3f} "
            f"{s['tokens'] / max(1e-9, secs):7.1f}  {s['exit_hist']}"
        )
    return lines
