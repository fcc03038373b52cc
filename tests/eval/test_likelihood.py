"""The batched likelihood scorer against a naive oracle: each request scored alone, its full
sequence through the model, log-softmax, the continuation's tokens picked one by one."""

import torch
import torch.nn.functional as F

from adamba.eval.likelihood import loglikelihoods, rolling_logprob
from adamba.model.lm import LM
from tests.helpers import model_config


def naive(model, ctx, cont):
    full = (ctx + cont)[-(model.cfg.max_seq_len + 1) :]
    n = min(len(cont), len(full) - 1)
    with torch.no_grad():
        logits, _ = model(torch.tensor([full[:-1]]))
    total, greedy = 0.0, True
    for j in range(len(full) - 1 - n, len(full) - 1):
        lp = F.log_softmax(logits[0, j].double(), -1)
        total += float(lp[full[j + 1]])
        greedy &= int(lp.argmax()) == full[j + 1]
    return total, greedy


def test_batched_scores_equal_one_at_a_time():
    torch.manual_seed(0)
    model = LM(
        model_config(
            {
                "d_model": 32,
                "n_layer": 2,
                "vocab_size": 50,
                "max_seq_len": 16,
                "pattern": "MA",
                "attn": {"n_head": 2, "n_kv_head": 1},
                "mamba": {"ffn": "none", "d_state": 8, "head_dim": 8, "chunk_size": 4},
            }
        )
    )
    g = torch.Generator().manual_seed(1)
    rnd = lambda n: torch.randint(3, 50, (n,), generator=g).tolist()  # noqa: E731
    reqs = [([0] + rnd(a), rnd(b)) for a, b in [(3, 1), (10, 4), (2, 2), (20, 3), (1, 30), (5, 5), (14, 2)]]
    reqs.append(([0], [7]))
    got = loglikelihoods(model, reqs, batch_size=3)
    for (ctx, cont), s in zip(reqs, got):
        lp, greedy = naive(model, ctx, cont)
        assert abs(s.logprob - lp) < 1e-4 and s.greedy == greedy
        assert s.n_tokens == min(len(cont), model.cfg.max_seq_len)
    # a greedy continuation is recognised as one
    ctx = [0, 5, 6]
    with torch.no_grad():
        best = int(model(torch.tensor([ctx]))[0][0, -1].argmax())
    assert loglikelihoods(model, [(ctx, [best])])[0].greedy


def test_rolling_covers_every_token_once():
    torch.manual_seed(0)
    model = LM(
        model_config(
            {
                "d_model": 32,
                "n_layer": 1,
                "vocab_size": 50,
                "max_seq_len": 8,
                "attn": {"n_head": 2, "n_kv_head": 1},
            }
        )
    )
    ids = torch.randint(3, 50, (21,)).tolist()
    total, n = rolling_logprob(model, ids, bos=0)
    assert n == 21
    # the same windows scored by the oracle
    seq, want = [0] + ids, 0.0
    for start in range(1, len(seq), 8):
        cont = seq[start : start + 8]
        want += naive(model, seq[max(0, start - (9 - len(cont))) : start], cont)[0]
    assert abs(total - want) < 1e-4
