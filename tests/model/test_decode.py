"""Plain decoding with caches against the naive loop that re-runs the whole sequence per token."""

import pytest
import torch

from adamba.model.decode import generate, sample_next
from adamba.model.lm import LM
from tests.helpers import model_config


@pytest.mark.parametrize("pattern", ["A", "AMK"])
def test_greedy_generate_equals_rerunning_the_whole_sequence(pattern):
    torch.manual_seed(0)
    cfg = model_config(
        vocab_size=61,
        d_model=32,
        n_layer=3,
        pattern=pattern,
        attn={"n_head": 2, "n_kv_head": 1},
        mamba={"head_dim": 16},
    )
    model = LM(cfg).eval()
    idx = torch.randint(0, 61, (2, 5))
    got = torch.stack(list(generate(model, idx, 8, temperature=0.0)), 1)
    seq = idx
    with torch.no_grad():
        for _ in range(8):
            seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, seq[:, 5:])


def test_stop_ids_end_generation_when_every_row_stopped():
    torch.manual_seed(0)
    model = LM(model_config(vocab_size=61, d_model=32, n_layer=1, attn={"n_head": 2, "n_kv_head": 1})).eval()
    first = next(generate(model, torch.tensor([[3, 4]]), 1, temperature=0.0))
    out = list(generate(model, torch.tensor([[3, 4]]), 10, temperature=0.0, stop_ids={int(first[0])}))
    assert len(out) == 1


def test_top_k_samples_only_the_k_most_likely():
    logits = torch.tensor([[0.0, 5.0, 4.0, -1.0]])
    g = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, 1.0, 2, g)) for _ in range(200)}
    assert draws == {1, 2}
