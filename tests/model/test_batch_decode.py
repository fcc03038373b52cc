"""Continuous batching is exact: rows that join, decode together and leave at different steps
produce the logits each sequence gets decoded alone (float64, so the comparison is tight), for
attention (with and without a sliding window), Mamba2 and KDA layers."""

import pytest
import torch

from adamba.model import decode
from adamba.model.batch_decode import BatchDecoder
from adamba.model.lm import LM
from tests.helpers import model_config

SHAPE = {
    "d_model": 64,
    "n_layer": 3,
    "vocab_size": 97,
    "max_seq_len": 64,
    "attn": {"n_head": 4, "n_kv_head": 2},
    "mamba": {"ffn": "none", "d_state": 16, "head_dim": 16, "chunk_size": 8},
    "kda": {"chunk_size": 8},
}


def alone(model, prompt, n):
    """Greedy tokens and their logits, one sequence at a time (the plain decoder)."""
    state = model.init_state(1)
    logits, _ = model(torch.tensor([prompt]), state=state)
    out, seen = [], []
    lg = logits[:, -1]
    for _ in range(n):
        seen.append(lg[0])
        t = int(lg.argmax(-1))
        out.append(t)
        lg, _ = model(torch.tensor([[t]]), state=state)
        lg = lg[:, -1]
    return out, seen


@pytest.mark.parametrize("pattern, window", [("A", 0), ("A", 4), ("MAM", 0), ("KAK", 0)])
def test_rows_joining_and_leaving_decode_as_alone(pattern, window):
    torch.manual_seed(0)
    model = LM(model_config(SHAPE, pattern=pattern, attn={"window": window})).double().eval()
    g = torch.Generator().manual_seed(1)
    prompts = {i: torch.randint(32, 97, (n,), generator=g).tolist() for i, n in enumerate([3, 9, 5, 14])}
    steps = {0: 10, 1: 4, 2: 8, 3: 6}  # tokens each row generates
    joins = {0: 0, 1: 2, 2: 3, 3: 5}  # the batch step at which each row joins (3: longer than the rest)
    want = {i: alone(model, prompts[i], steps[i]) for i in prompts}
    dec = BatchDecoder(model)
    got: dict[int, list] = {i: [] for i in prompts}
    nxt: dict[int, torch.Tensor] = {}
    for t in range(20):
        for i, at in joins.items():
            if at == t:
                nxt[i] = dec.add(i, prompts[i])
        if not len(dec):
            continue
        done = set()
        for i in dec.ids:  # record this step's logits, choose greedy tokens
            got[i].append(nxt[i])
            if len(got[i]) == steps[i]:
                done.add(i)
        tokens = torch.tensor([int(nxt[i].argmax()) for i in dec.ids])
        keep = [r for r in dec.ids if r not in done]
        if not keep:
            dec.remove(done)
            continue
        logits = dec.step(tokens)
        nxt.update({r: logits[j] for j, r in enumerate(dec.ids)})
        dec.remove(done)
    for i in prompts:
        assert len(got[i]) == steps[i], i
        torch.testing.assert_close(
            torch.stack(got[i]), torch.stack(want[i][1]), rtol=1e-7, atol=1e-7
        )  # fp64; summation order differs
    assert len(dec) == 0


def test_generate_agrees_with_the_oracle_helper():
    """The oracle above is the plain decoder: decode.generate gives the same greedy tokens."""
    torch.manual_seed(0)
    model = LM(model_config(SHAPE, pattern="MAM")).double().eval()
    prompt = [40, 41, 42, 43]
    toks = [int(t[0]) for t in decode.generate(model, torch.tensor([prompt]), 6, temperature=0.0)]
    assert toks == alone(model, prompt, 6)[0]
