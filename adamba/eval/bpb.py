"""Bits per byte: tokenizer-independent loss, so models with different vocabularies compare.

bpb = (sum of cross-entropy in nats over target tokens) / (ln 2 * UTF-8 bytes of those tokens).
Special tokens (0 bytes) are left out of both sums, as nanochat does.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F


def nats_and_bytes(ce: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> tuple[float, int]:
    """(summed cross-entropy in nats, UTF-8 bytes) over target tokens with at least one byte:
    the two sums of bits per byte, kept apart so batches add up."""
    b = token_bytes.to(targets.device)[targets.reshape(-1)]
    return float((ce.reshape(-1).float() * (b > 0)).sum()), int(b.sum())


def bits_per_byte(ce: torch.Tensor, targets: torch.Tensor, token_bytes: torch.Tensor) -> float:
    """Bits per byte of per-token cross-entropies (nats) `ce` against their `targets`: the one
    definition every scorer uses (validation, compute modes, benchmarks)."""
    nats, n_bytes = nats_and_bytes(ce, targets, token_bytes)
    return nats / (math.log(2) * max(1, n_bytes))


@torch.no_grad()
def evaluate_bpb(model, batches: Iterable, token_bytes: torch.Tensor, device="cpu", autocast=None) -> dict:
    """Mean loss and bits-per-byte over (x, y) batches, in eval mode; the model is left in the
    mode it came in (the trainer's model goes back to training, a loaded model stays in eval)."""
    was_training = model.training
    model.eval()
    nats = 0.0
    n_bytes = 0
    loss_sum, n_tok = 0.0, 0
    token_bytes = token_bytes.to(device)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        if autocast is not None:
            with autocast:
                logits, _ = model(x)
        else:
            logits, _ = model(x)
        ce = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1), reduction="none")
        n, b = nats_and_bytes(ce, y, token_bytes)
        nats += n
        n_bytes += b
        loss_sum += float(ce.sum())
        n_tok += ce.numel()
    model.train(was_training)
    return {
        "loss": loss_sum / max(1, n_tok),
        "bpb": nats / (math.log(2) * max(1, n_bytes)),
        "tokens": n_tok,
        "bytes": n_bytes,
    }


def unigram_bpb(train_tokens: np.ndarray, val_tokens: np.ndarray, token_bytes: np.ndarray) -> float:
    """Bits per byte of the best context-free model: token frequencies counted on the training
    tokens (add-one smoothed), scored on the validation tokens. A model that beats this has
    learned structure, not just symbol frequencies."""
    vocab = len(token_bytes)
    counts = np.bincount(train_tokens.astype(np.int64), minlength=vocab).astype(np.float64) + 1.0
    logp = np.log2(counts / counts.sum())
    val = val_tokens.astype(np.int64)
    val = val[token_bytes[val] > 0]
    return float(-logp[val].sum() / token_bytes[val].sum())
