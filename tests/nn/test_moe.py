"""The MoE feed-forward against transformers' GptOssMLP (same weights, tiny config built
locally), its load-balancing loss against transformers' function, and its routing counts
against a dense loop over every expert."""

import pytest
import torch

from adamba.nn.moe import MoE, balance_loss

transformers = pytest.importorskip("transformers")


def gpt_oss_mlp(d=32, experts=6, top_k=2, hidden=24):
    from transformers.models.gpt_oss.configuration_gpt_oss import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    cfg = GptOssConfig(
        hidden_size=d, intermediate_size=hidden, num_local_experts=experts, num_experts_per_tok=top_k
    )
    torch.manual_seed(0)
    ref = GptOssMLP(cfg)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.5)  # large enough that the clamps act
    ours = MoE(d, experts, top_k, hidden, cfg.swiglu_alpha, cfg.swiglu_limit)
    with torch.no_grad():
        ours.router.weight.copy_(ref.router.weight)
        ours.router.bias.copy_(ref.router.bias)
        for name in ("gate_up_proj", "gate_up_proj_bias", "down_proj", "down_proj_bias"):
            getattr(ours, name).copy_(getattr(ref.experts, name))
    return ref, ours, cfg


def test_equals_transformers_gpt_oss_mlp():
    ref, ours, _ = gpt_oss_mlp()
    x = torch.randn(3, 10, 32) * 2
    want, _ = ref(x)
    got = ours(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    big = ours.activation(torch.full((1, 4), 50.0))  # the clamps: gate capped at 7, up at 7
    assert torch.allclose(big, torch.tensor([(7 + 1) * 7 * torch.sigmoid(torch.tensor(7 * 1.702))] * 2))


def test_balance_loss_equals_transformers():
    from transformers.models.gpt_oss.modeling_gpt_oss import load_balancing_loss_func

    _, ours, cfg = gpt_oss_mlp()
    x = torch.randn(4, 7, 32)
    ours(x)
    logits = ours.router(x.reshape(-1, 32))
    want = load_balancing_loss_func((logits,), cfg.num_local_experts, cfg.num_experts_per_tok)
    assert float(balance_loss(ours.stats, 6)) == pytest.approx(float(want), rel=1e-5)
    assert sum(ours.tokens_per_expert()) == 28 * 2
    loss = balance_loss(ours.stats, 6)
    loss.backward()
    assert ours.router.weight.grad is not None and ours.router.weight.grad.abs().sum() > 0


def test_grouped_equals_a_dense_loop_over_experts():
    torch.manual_seed(1)
    m = MoE(16, 5, 3, 8)
    x = torch.randn(20, 16)
    got = m(x)
    logits = m.router(x)
    top, idx = torch.topk(logits, 3, -1)
    w = torch.softmax(top, -1)
    want = torch.zeros_like(x)
    for t in range(20):
        for j in range(3):
            e = int(idx[t, j])
            y = (
                m.activation(x[t] @ m.gate_up_proj[e] + m.gate_up_proj_bias[e]) @ m.down_proj[e]
                + m.down_proj_bias[e]
            )
            want[t] += w[t, j] * y
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert m.tokens_per_expert() == torch.bincount(idx.reshape(-1), minlength=5).tolist()
