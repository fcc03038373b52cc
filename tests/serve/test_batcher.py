"""The request batcher: concurrent requests share decode steps, and each gets exactly the tokens
it gets alone (its own seed, its own settings), with stop tokens, length limits and cancellation."""

import threading

import pytest
import torch

from adamba.model.lm import LM
from adamba.serve.batcher import Batcher, Sampling, sample
from tests.helpers import model_config

SHAPE = {
    "d_model": 64,
    "n_layer": 3,
    "pattern": "MAK",
    "vocab_size": 97,
    "max_seq_len": 128,
    "attn": {"n_head": 4, "n_kv_head": 2},
    "mamba": {"ffn": "none", "d_state": 16, "head_dim": 16, "chunk_size": 8},
    "kda": {"chunk_size": 8},
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return LM(model_config(SHAPE)).double().eval()


def requests(n):
    g = torch.Generator().manual_seed(2)
    out = []
    for i in range(n):
        ids = torch.randint(32, 97, (3 + 2 * i,), generator=g).tolist()
        s = Sampling(
            max_new_tokens=5 + i, temperature=[0.0, 0.8, 1.2][i % 3], top_k=[None, 20][i % 2], seed=i
        )
        s.top_p = 0.9 if i % 4 == 1 else 1.0
        out.append((ids, s))
    return out


def test_concurrent_requests_get_what_they_get_alone(model):
    reqs = requests(8)
    alone = Batcher(model, max_batch=1)
    want = [list(alone.submit(ids, s)) for ids, s in reqs]
    alone.close()
    b = Batcher(model, max_batch=16)
    got: list = [None] * len(reqs)

    def client(i):
        got[i] = list(b.submit(*reqs[i]))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    b.close()
    assert got == want
    assert [len(w) for w in want] == [s.max_new_tokens for _, s in reqs]
    assert b.rows_stepped / b.steps > 2  # steps were shared


def test_stop_tokens_and_cancel(model):
    b = Batcher(model)
    ids, s = requests(1)[0]
    full = list(b.submit(ids, Sampling(max_new_tokens=12, temperature=0.0)))
    cut = list(b.submit(ids, Sampling(max_new_tokens=12, temperature=0.0, stop={full[3]})))
    assert cut == full[: full.index(full[3])]  # ends before the first stop token, which is not emitted
    stream = b.submit(ids, Sampling(max_new_tokens=10_000, temperature=1.0, seed=1))
    first = []
    for tok in stream:
        first.append(tok)
        if len(first) == 3:
            stream.cancel()
    assert 3 <= len(first) <= 4  # stops at the next step
    assert list(b.submit(ids, Sampling(max_new_tokens=2, temperature=0.0))) == full[:2]  # still serving
    b.close()


def test_nucleus_sampling():
    logits = torch.tensor([3.0, 2.9, 0.0, -1.0])
    g = torch.Generator().manual_seed(0)
    s = Sampling(temperature=1.0, top_p=0.6)  # p = 0.507, 0.458, 0.025, 0.009
    assert {sample(logits, s, g) for _ in range(50)} == {0, 1}  # 0 alone is below 0.6: 0 and 1 kept
    s.top_p = 0.01
    assert {sample(logits, s, g) for _ in range(20)} == {0}
    s.top_p, s.top_k = 1.0, 3
    assert {sample(logits, s, g) for _ in range(300)} == {0, 1, 2}
