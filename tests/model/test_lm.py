import pytest
import torch

from adamba.model.lm import LM
from adamba.nn.attention import single_query_attention, single_query_pays
from adamba.nn.hf_twins import hf_llama
from tests.helpers import model_config


def tiny(**kw):
    base = dict(vocab_size=97, d_model=64, n_layer=2, attn={"n_head": 4, "n_kv_head": 2}, max_seq_len=64)
    return model_config(base, **kw)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"attn": {"window": 5}},
        {"mlp": {"act": "swiglu"}, "tie_embeddings": True},
        {"attn": {"n_kv_head": 4}},
    ],
)
def test_prefill_then_decode_equals_full_forward(kw):
    torch.manual_seed(0)
    assert_decode_equals_forward(LM(tiny(**kw)).eval(), torch.randint(0, 97, (2, 23)), prompt=10)


def assert_decode_equals_forward(model: LM, x: torch.Tensor, prompt: int) -> None:
    """Prefill `prompt` tokens, decode the rest one at a time: the logits of the full forward."""
    full, _ = model(x)
    state = model.init_state(x.shape[0])
    outs = [model(x[:, :prompt], state=state)[0]]
    outs += [model(x[:, t : t + 1], state=state)[0] for t in range(prompt, x.shape[1])]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_single_query_attention_equals_sdpa_and_serves_batched_decode():
    """The grouped-matmul path for one query per row (CPU batched decoding) gives SDPA's GQA
    result, is taken for a large batch of grouped heads only, and a 32-row decode through it
    (plain and sliding window) still equals the full forward."""
    torch.manual_seed(0)
    q, k, v = torch.randn(32, 8, 1, 16), torch.randn(32, 2, 11, 16), torch.randn(32, 2, 11, 16)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(single_query_attention(q, k, v), ref, atol=1e-6, rtol=1e-5)
    assert single_query_pays(q, k)
    assert not single_query_pays(q[:2], k[:2])  # a small batch: SDPA
    assert not single_query_pays(q[:, :2], k)  # one query head per KV head: SDPA
    assert not single_query_pays(q.bfloat16(), k.bfloat16())
    for window in (0, 5):
        model = LM(tiny(attn={"n_head": 8, "n_kv_head": 2, "window": window})).eval()
        assert_decode_equals_forward(model, torch.randint(0, 97, (32, 16)), prompt=6)


def test_causal_and_ignore_index():
    torch.manual_seed(0)
    model = LM(tiny())
    x = torch.randint(0, 97, (1, 16))
    a, _ = model(x)
    x2 = x.clone()
    x2[0, 10:] = 0
    b, _ = model(x2)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    y = torch.randint(0, 97, (1, 16))
    y_masked = y.clone()
    y_masked[0, :8] = -100
    _, loss_masked = model(x, y_masked)
    logits, _ = model(x)
    ref = torch.nn.functional.cross_entropy(logits[0, 8:], y[0, 8:])
    torch.testing.assert_close(loss_masked, ref)


def test_tied_embeddings_share_storage():
    model = LM(tiny(tie_embeddings=True))
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()


def test_matches_transformers_llama():
    """Oracle: with SwiGLU, no QK-norm, untied head, our dense LM is exactly a Llama."""
    pytest.importorskip("transformers")
    cfg = tiny(mlp={"act": "swiglu", "ratio": 2.5}, attn={"qk_norm": False}, norm_eps=1e-6)
    torch.manual_seed(0)
    ours = LM(cfg).eval()
    hf = hf_llama(ours, attn_implementation="eager").eval()
    x = torch.randint(0, cfg.vocab_size, (2, 20))
    torch.testing.assert_close(ours(x)[0], hf(input_ids=x).logits, atol=1e-5, rtol=1e-4)


def test_qk_norm_stays_fused_under_bf16_autocast():
    """Under autocast the projections come out in bf16; the norm weights must follow, or
    F.rms_norm drops to its slow composite path (with a warning) on every attention layer."""
    import warnings

    model = LM(tiny(attn={"qk_norm": True}))
    x = torch.randint(0, 97, (2, 9))
    with warnings.catch_warnings(), torch.autocast("cpu", torch.bfloat16):
        warnings.filterwarnings("error", message=".*Mismatch dtype.*")
        logits, _ = model(x)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()


def test_activation_checkpointing_recomputes_and_keeps_gradients(monkeypatch):
    """block.checkpointing: the same loss and gradients, bit for bit, with every block's forward
    run twice (once more in backward); off in no_grad and decoding (state given)."""
    from adamba.model.lm import Block

    torch.manual_seed(0)
    model = LM(
        model_config({"vocab_size": 97, "d_model": 32, "n_layer": 3, "pattern": "AMK", "max_seq_len": 16})
    )
    x, y = torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))
    calls = []
    real = Block._forward
    monkeypatch.setattr(Block, "_forward", lambda self, *a: calls.append(1) or real(self, *a))
    grads = []
    for on in (False, True):
        for b in model.blocks:
            b.checkpointing = on
        calls.clear()
        model.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        assert len(calls) == 3 * (2 if on else 1)
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    calls.clear()
    with torch.no_grad():
        model(x)
    assert len(calls) == 3
