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


def test_moe_layers_in_the_model_train_and_log_the_loss_without_the_aux(tiny_data, tmp_path):
    """model.ffn = "moe" (or letters D/E/N) puts MoE layers in the LM; training adds
    aux_weight x the balance loss to the gradient's loss and logs the cross-entropy alone; the
    checkpoint loads back with the same logits; the FLOPs count sees top-k experts."""
    from adamba.checkpoint import load_model
    from adamba.config import load_config
    from adamba.model.flops import train_flops
    from adamba.model.lm import LM
    from adamba.train import trainer
    from adamba.train.monitor import read_metrics
    from tests.helpers import model_config, tiny_overrides

    cfg = model_config(
        {
            "d_model": 32,
            "n_layer": 3,
            "vocab_size": 60,
            "ffn": "DED",
            "attn": {"n_head": 2, "n_kv_head": 1},
            "moe": {"n_experts": 4, "top_k": 2},
        }
    )
    assert cfg.layer_ffns() == ["mlp", "moe", "mlp"]
    torch.manual_seed(0)
    model = LM(cfg)
    assert isinstance(model.blocks[1].mlp, MoE) and model.blocks[1].mlp.hidden == 128
    x = torch.randint(0, 60, (2, 16))
    _, with_aux = model(x, x)
    assert model.aux_loss is not None and float(model.aux_loss) > 0
    assert float(with_aux - model.aux_loss) == pytest.approx(float(model(x, x)[1] - model.aux_loss))
    from types import SimpleNamespace

    from adamba.train.objectives import OBJECTIVES

    loss, logged, _ = OBJECTIVES["lm"].loss(SimpleNamespace(model=model, forward=model), 1, lambda: (x, x))
    assert float(loss - logged) == pytest.approx(float(model.aux_loss), abs=1e-6)  # logged: the CE alone
    dense = train_flops(
        LM(
            model_config(
                {**{"d_model": 32, "n_layer": 3, "vocab_size": 60, "attn": {"n_head": 2, "n_kv_head": 1}}}
            )
        ),
        16,
    ).total
    assert train_flops(model, 16).total > dense  # two experts of the MLP's size + router
    out = tmp_path / "moe"
    over = tiny_overrides(tiny_data, out, steps=4) + [
        "model.ffn=moe",
        "model.moe.n_experts=4",
        "train.eval_every=0",
    ]
    trainer.run(load_config("tiny-cpu", over))
    rows = read_metrics(out / "metrics.jsonl")
    assert len(rows) == 4 and all(r["loss"] == r["loss"] for r in rows)
    # the routing is logged: balance loss (~top_k = 2 when even, at most E x top_k = 8), max load
    assert all(0.0 < r["moe_balance"] <= 8.0 and 1.0 <= r["moe_max_load"] <= 4.0 for r in rows)
    m2, tok, _ = load_model(out)
    assert all(isinstance(b.mlp, MoE) for b in m2.blocks)
    y = torch.randint(0, m2.cfg.vocab_size, (1, 8))
    assert torch.equal(m2(y)[0], m2(y)[0])


def test_matryoshka_width_is_the_experts_first_units():
    """At width w every expert keeps its first units: the same as an MoE of that many units built
    from the sliced weights (gate/up interleaved per unit); a row mask gives each row its own."""
    _, ours, _ = gpt_oss_mlp(hidden=24)
    x = torch.randn(3, 5, 32)
    n = ours.units_at(0.5)
    small = MoE(32, 6, 2, n, ours.alpha, ours.limit)
    with torch.no_grad():
        small.router.load_state_dict(ours.router.state_dict())
        small.gate_up_proj.copy_(ours.gate_up_proj[:, :, : 2 * n])
        small.gate_up_proj_bias.copy_(ours.gate_up_proj_bias[:, : 2 * n])
        small.down_proj.copy_(ours.down_proj[:, :n])
        small.down_proj_bias.copy_(ours.down_proj_bias)
    narrow = ours(x, 0.5)
    assert n == 12 and torch.allclose(narrow, small(x), atol=1e-5)
    assert (narrow - ours(x)).abs().max() > 1e-2  # the width does change the output
    mask = (torch.arange(24) < torch.tensor([24, 12, 24])[:, None]).float()[:, None, :]  # rows: 1, 0.5, 1
    mixed = ours(x, 1.0, mask)
    assert torch.allclose(mixed[1], narrow[1], atol=1e-5) and torch.allclose(mixed[0], ours(x)[0], atol=1e-5)


def test_elastic_training_with_moe_layers(tiny_data, tmp_path):
    """elastic.enabled with model.ffn = moe: Matryoshka widths train, the compute modes decode."""
    from adamba.checkpoint import load_model
    from adamba.config import load_config
    from adamba.eval.efficiency import efficiency_lines
    from adamba.train import trainer
    from tests.helpers import elastic_overrides

    out = tmp_path / "el"
    over = elastic_overrides(tiny_data, out, steps=4) + ["model.ffn=moe", "model.moe.n_experts=4"]
    trainer.run(load_config("tiny-cpu", over))
    model, tok, ck = load_model(out)
    lines = efficiency_lines(model, tok, ck, None, 2, decode_batch=2)
    assert any(ln.strip().startswith("ghost") for ln in lines)
