"""Log-likelihoods of continuations: what multiple-choice tasks, the lm-eval adapter and rolling
perplexity all rest on, so they score the same numbers.

A request is (context ids, continuation ids). The model reads context + continuation (minus the
last token), left-truncated to its context length (the continuation always kept whole when it
fits), and the answer is the sum of the continuation tokens' log-probabilities and whether each
was the greedy choice. Requests are sorted by length and batched with right padding; a
sequence's logits do not depend on padding after it (causal), so batching changes nothing but
speed (tests/eval/test_likelihood.py checks it against one-at-a-time scoring).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from adamba.data.tokenizer import Tokenizer
from adamba.model.lm import LM


@dataclass
class Scored:
    logprob: float  # sum over the continuation's tokens
    greedy: bool  # every continuation token was the argmax
    n_tokens: int


def encode_pair(tok: Tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """A (context, continuation) text pair as ids, the way lm-evaluation-harness splits it:
    whitespace ending the context moves to the start of the continuation (so " Paris" is one
    token, not " " + "Paris"), the context starts with BOS, and each side is encoded on its
    own (the boundary between them is always a token boundary)."""
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    return [tok.bos_id] + tok.encode(context), tok.encode(continuation)


def fit_prompt(ids: list[int], max_new_tokens: int, max_len: int) -> tuple[list[int], int]:
    """A prompt left-truncated so prompt + generation fit the model's context, and how many tokens
    may be generated: up to `max_new_tokens`, cut to half the context when the prompt is long
    (a budget as long as the context would otherwise leave no prompt at all)."""
    budget = max(1, min(max_new_tokens, max(max_len - len(ids), max_len // 2)))
    keep = max(1, max_len - budget)
    ids = ids[max(0, len(ids) - keep) :]
    return ids, max(1, min(max_new_tokens, max_len - len(ids)))


def _window(ctx: list[int], cont: list[int], max_len: int) -> tuple[list[int], int]:
    """The ids the model reads (context + continuation without its last token, left-truncated
    to max_len) and where the continuation's targets start in them (a continuation longer than
    the model reads keeps its last max_len tokens)."""
    full = (ctx + cont)[-(max_len + 1) :]
    inp = full[:-1]
    return inp, len(inp) - min(len(cont), len(inp))


@torch.no_grad()
def loglikelihoods(
    model: LM, requests: list[tuple[list[int], list[int]]], batch_size: int = 16, progress=None
) -> list[Scored]:
    """Score every (context, continuation); `progress(n)` is called as requests finish."""
    if not requests:
        return []
    device = next(model.parameters()).device
    max_len = model.cfg.max_seq_len
    for ctx, cont in requests:
        if not cont:
            raise ValueError("a continuation must have at least one token")
        if not ctx:
            raise ValueError("a context must have at least one token (start with BOS)")
    order = sorted(range(len(requests)), key=lambda i: -len(requests[i][0]) - len(requests[i][1]))
    out: list[Scored | None] = [None] * len(requests)
    was_training = model.training
    model.eval()
    try:
        for s in range(0, len(order), batch_size):
            idxs = order[s : s + batch_size]
            wins = [_window(*requests[i], max_len) for i in idxs]
            T = max(len(w) for w, _ in wins)
            x = torch.zeros(len(wins), T, dtype=torch.long, device=device)
            for r, (w, _) in enumerate(wins):
                x[r, : len(w)] = torch.tensor(w, device=device)
            logits, _ = model(x)
            logp = F.log_softmax(logits.float(), dim=-1)
            for r, (i, (w, start)) in enumerate(zip(idxs, wins)):
                cont = requests[i][1][-(len(w) - start) :]
                tgt = torch.tensor(cont, device=device)
                lp = logp[r, start : len(w)]
                picked = lp.gather(-1, tgt[:, None]).squeeze(-1)
                out[i] = Scored(float(picked.sum()), bool((lp.argmax(-1) == tgt).all()), len(cont))
            if progress is not None:
                progress(len(idxs))
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


@torch.no_grad()
def rolling_logprob(model: LM, ids: list[int], bos: int, batch_size: int = 16) -> tuple[float, int]:
    """Total log-probability of a whole text (every token after a BOS), in disjoint windows of
    the model's context, each window conditioned on the previous tokens that fit (lm-eval's
    loglikelihood_rolling). Returns (sum, tokens scored)."""
    max_len = model.cfg.max_seq_len
    seq = [bos] + ids
    reqs = []
    for start in range(1, len(seq), max_len):
        cont = seq[start : start + max_len]
        ctx = seq[max(0, start - (max_len + 1 - len(cont))) : start]
        reqs.append((ctx, cont))
    scored = loglikelihoods(model, reqs, batch_size)
    return sum(s.logprob for s in scored), sum(s.n_tokens for s in scored)
