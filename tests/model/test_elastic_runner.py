"""The elastic runner: early exit leaves copy-forward K/V in the skipped layers, a batch decodes
like each sequence alone (fixed modes and auto), and auto applies the predicted width."""

import pytest
import torch

from adamba.config import ElasticConfig
from adamba.errors import AdambaError
from adamba.model import elastic as el
from adamba.model.elastic_runner import ElasticRunner
from adamba.model.lm import LM
from tests.helpers import WIDTHS, elastic_config


def test_early_exit_copies_kv_forward_calm_style():
    """A token that exits at layer l still leaves a KV entry in every later layer, computed from
    its exit hidden state: later tokens attend to it exactly as if that state were the input."""
    torch.manual_seed(0)
    cfg = elastic_config(n_layer=3)
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS, gate_hidden=0)  # linear gates: bias decides
    model = el.attach_elastic(LM(cfg), ecfg).eval()
    with torch.no_grad():  # gate of layer 0 always fires, layer 1 never
        model.elastic.gates[0].bias.fill_(20.0)
        model.elastic.gates[1].bias.fill_(-20.0)
    x = torch.randint(0, 97, (1, 6))
    r = ElasticRunner(model, ecfg, el.Policy([1.0] * 3, exit_threshold=0.95))
    r.prefill(x[:, :4])
    out = r.step(x[:, 4:5])
    assert r.stats.exit_layer == [0]
    assert all(c.length == 5 for c in r.state)
    # reference: layer 0 on the token, then the exit hidden state as the input of layers 1, 2 (K/V)
    state = model.init_state(1)
    model(x[:, :4], state=state)
    h = model.blocks[0](model.embed(x[:, 4:5]), state[0])
    for j in (1, 2):
        b = model.blocks[j]
        b.mixer(b.norm1(h), state[j])  # appends K/V computed from h (the output is discarded)
    torch.testing.assert_close(out, model.head(model.norm(h))[:, -1])
    for j in (1, 2):
        torch.testing.assert_close(r.state[j].k[:, :, :5], state[j].k[:, :, :5], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(r.state[j].v[:, :, :5], state[j].v[:, :, :5], atol=1e-6, rtol=1e-6)
    assert r.stats.flops[0] < r.stats.full_flops[0]


@pytest.mark.parametrize("mode", ["ghost", "think"])
def test_fixed_modes_decode_a_batch_like_one_sequence_at_a_time(mode):
    """A fixed-width runner decoding 3 sequences together gives each one's batch-1 logits."""
    torch.manual_seed(0)
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS)
    model = el.attach_elastic(LM(elastic_config(n_layer=3)), ecfg).eval()
    x = torch.randint(0, 97, (3, 9))
    pol = el.mode_policy(mode, model, ecfg)
    rb = ElasticRunner(model, ecfg, pol, batch=3)
    batched = [rb.prefill(x[:, :4])] + [rb.step(x[:, t : t + 1]) for t in range(4, 9)]
    for i in range(3):
        r1 = ElasticRunner(model, ecfg, pol)
        single = [r1.prefill(x[i : i + 1, :4])] + [r1.step(x[i : i + 1, t : t + 1]) for t in range(4, 9)]
        torch.testing.assert_close(
            torch.cat(single), torch.stack([b[i] for b in batched]), atol=1e-5, rtol=1e-5
        )
    with pytest.raises(AdambaError, match="rows"):
        rb2 = ElasticRunner(model, ecfg, pol, batch=2)
        rb2.prefill(x[:, :4])


def test_auto_decodes_a_batch_like_one_sequence_at_a_time():
    """Batched adaptive decoding (auto: a predicted width per row, per-token exit and expansion,
    copy-forward K/V for exited rows) gives every row the exit layers, expansions, widths and
    logits of batch-1 decoding; a model with a Mamba layer refuses it with a clear error."""
    torch.manual_seed(0)
    L, T, prompt, B = 4, 20, 4, 4
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS, expand_layers=2, expand_threshold=0.3)
    model = el.attach_elastic(LM(elastic_config(n_layer=L)), ecfg).eval()
    with torch.no_grad():  # spread the gate and the predictor so rows differ
        for p in model.elastic.parameters():  # every gate set (per width) and the predictor
            torch.nn.init.normal_(p, 0, 0.5)
    x = torch.randint(0, 97, (B, T))
    n = T - prompt
    auto = el.Policy(None, exit_threshold=0.7, expand_threshold=0.3)
    policies = [  # auto: a predicted width per row, the narrower rows masked in one shared pass
        (auto, 0, False),  # (max_wide 0) or the wider rows as their own groups (max_wide B)
        (auto, B, False),
        (el.Policy(None, exit_threshold=0.7), B, False),  # auto without expansion
        (el.Policy([0.5] * L, exit_threshold=0.7, expand_threshold=0.3), 1, False),  # one width
        (el.Policy([1.0] * L, exit_threshold=0.7), 1, False),
        (auto, 1, True),  # the GPUs' path: no row subsets, every row masked to its width
        (el.Policy([0.5] * L, exit_threshold=0.7, expand_threshold=0.3), 1, True),
    ]
    for pol, max_wide, dense in policies:
        rb = ElasticRunner(model, ecfg, pol, batch=B)
        rb.max_wide, rb.dense = max_wide, dense
        batched = [rb.prefill(x[:, :prompt])] + [rb.step(x[:, t : t + 1]) for t in range(prompt, T)]
        if pol.widths is None:
            assert len(set(rb.row_widths)) >= 2  # rows really run at different widths
        if pol.widths is None and not dense:
            assert (rb.masks_a is not None) if max_wide == 0 else (rb.masks_a is None and rb.wide)
        assert (rb.dense_plan is not None) == dense
        sb = rb.stats
        for b in range(B):
            r1 = ElasticRunner(model, ecfg, pol)
            single = [r1.prefill(x[b : b + 1, :prompt])] + [
                r1.step(x[b : b + 1, t : t + 1]) for t in range(prompt, T)
            ]
            assert r1.widths[0] == rb.row_widths[b]
            torch.testing.assert_close(
                torch.cat(single), torch.stack([o[b] for o in batched]), atol=1e-5, rtol=1e-5
            )
            assert r1.stats.exit_layer == sb.exit_layer[b::B][:n]
            assert r1.stats.expanded == sb.expanded[b::B][:n]
            assert r1.stats.widths == sb.widths[b::B][:n]
            assert r1.stats.flops == pytest.approx(sb.flops[b::B][:n])
        hist = torch.bincount(torch.tensor(sb.exit_layer), minlength=L)
        assert (hist[: L - 1] > 0).sum() >= 2 and hist[L - 1] > 0
        assert any(sb.expanded) == (pol.expand_threshold is not None)
    hybrid = el.attach_elastic(LM(elastic_config(n_layer=2, pattern="AM")), ecfg)
    with pytest.raises(AdambaError, match="attention-only"):
        ElasticRunner(hybrid, ecfg, pol, batch=2)


def test_auto_applies_the_predicted_width_uniformly():
    """auto mode: the predictor's smallest 'good enough' width runs in every layer (the uniform
    schedules sandwich training teaches), so the prefill equals the plain forward at that width."""
    torch.manual_seed(0)
    L = 3
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS)
    model = el.attach_elastic(LM(elastic_config(n_layer=L)), ecfg).eval()
    good = torch.tensor([-9.0, 9.0, 9.0, 9.0])  # 0.125 not good enough, 0.25 is
    model.elastic.predictor_logits = lambda pooled: good.expand(pooled.shape[0], L, 4)
    x = torch.randint(0, 97, (1, 7))
    r = ElasticRunner(model, ecfg, el.Policy(None))
    out = r.prefill(x)
    assert r.widths == [0.25] * L
    with torch.no_grad():
        ref, _ = model(x, widths=[0.25] * L)
    torch.testing.assert_close(out, ref[:, -1])
    model.elastic.predictor_logits = lambda pooled: torch.full((pooled.shape[0], L, 4), -9.0)
    r = ElasticRunner(model, ecfg, el.Policy(None))
    r.prefill(x)
    assert r.widths == [1.0] * L  # nothing predicted good: full width
