"""Elastic compute: exact Matryoshka slices, sandwich training, gate/predictor, cache, modes."""

import pytest
import torch

from adamba.config import ElasticConfig, load_config
from adamba.errors import AdambaError
from adamba.model import elastic as el
from adamba.model.cache import MatryoshkaKVCache
from adamba.model.lm import LM
from adamba.nn.attention import Attention
from adamba.nn.mlp import MLP
from tests.helpers import model_config

WIDTHS = [0.125, 0.25, 0.5, 1.0]


def tiny(**kw):
    base = dict(
        vocab_size=97,
        d_model=64,
        n_layer=3,
        attn={"n_head": 8, "n_kv_head": 2, "head_dim": 8},
        max_seq_len=64,
    )
    return model_config(base, **kw)


@pytest.mark.parametrize("width", [0.125, 0.5, 1.0])
@pytest.mark.parametrize("kw", [{}, {"window": 4}, {"qk_norm": False, "use_rope": False}])  # [model.attn]
def test_attention_slice_equals_standalone_small_layer(width, kw):
    torch.manual_seed(0)
    cfg = tiny(attn=kw)
    big = Attention(cfg)
    for p in big.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    hq, hkv = big.heads_at(width)
    small = Attention(tiny(attn={"n_head": hq, "n_kv_head": hkv, **kw}))
    hd = cfg.attn.head_dim
    W = big.qkv_proj.weight
    kq, kk = big.q_dim, big.q_dim + big.kv_dim
    with torch.no_grad():
        small.qkv_proj.weight.copy_(torch.cat([W[: hq * hd], W[kq : kq + hkv * hd], W[kk : kk + hkv * hd]]))
        small.o_proj.weight.copy_(big.o_proj.weight[:, : hq * hd])
        if cfg.attn.qk_norm:
            small.q_norm_weight.copy_(big.q_norm_weight)
            small.k_norm_weight.copy_(big.k_norm_weight)
    x = torch.randn(2, 11, 64)
    torch.testing.assert_close(big(x, width=width), small(x), atol=1e-5, rtol=1e-5)


def test_partial_gqa_group_matches_expanded_heads():
    """hq not a multiple of the group: query head i still reads KV head i // group."""
    torch.manual_seed(0)
    cfg = tiny(attn={"n_head": 8, "n_kv_head": 2})  # group 4
    a = Attention(cfg)
    hq, hkv = a.heads_at(0.75)  # 6 query heads over 2 KV heads
    assert (hq, hkv) == (6, 2)
    # reference: a model with n_kv_head = n_head (MHA) whose KV heads repeat the GQA ones
    ref = Attention(tiny(attn={"n_head": 6, "n_kv_head": 6}))
    hd = 8
    W = a.qkv_proj.weight
    kmap = [i // 4 for i in range(6)]
    with torch.no_grad():
        k_rows = torch.cat([W[a.q_dim + j * hd : a.q_dim + (j + 1) * hd] for j in kmap])
        v_rows = torch.cat([W[a.q_dim + a.kv_dim + j * hd : a.q_dim + a.kv_dim + (j + 1) * hd] for j in kmap])
        ref.qkv_proj.weight.copy_(torch.cat([W[: 6 * hd], k_rows, v_rows]))
        ref.o_proj.weight.copy_(a.o_proj.weight[:, : 6 * hd])
    x = torch.randn(1, 9, 64)
    torch.testing.assert_close(a(x, width=0.75), ref(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("act", ["relu2", "swiglu"])
def test_mlp_slice_equals_standalone_small_mlp(act):
    torch.manual_seed(0)
    big = MLP(tiny(mlp={"act": act}))
    n = big.units_at(0.25)
    small = MLP(tiny(mlp={"act": act, "ratio": n / 64}))
    assert small.hidden == n
    with torch.no_grad():
        small.w_up.weight.copy_(big.w_up.weight[:n])
        small.w_down.weight.copy_(big.w_down.weight[:, :n])
        if act == "swiglu":
            small.w_gate.weight.copy_(big.w_gate.weight[:n])
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(big(x, 0.25), small(x), atol=1e-6, rtol=1e-6)


def test_sliced_weights_are_views():
    a = Attention(tiny())
    calls = []
    real = torch.nn.functional.linear

    def spy(x, w, b=None):
        calls.append(w)
        return real(x, w, b)

    torch.nn.functional.linear = spy
    try:
        a(torch.randn(1, 3, 64), width=0.25)
    finally:
        torch.nn.functional.linear = real
    owners = {a.qkv_proj.weight.untyped_storage().data_ptr(), a.o_proj.weight.untyped_storage().data_ptr()}
    assert calls and all(w.untyped_storage().data_ptr() in owners for w in calls)


def test_width_one_is_bit_identical_to_plain_model():
    torch.manual_seed(0)
    model = LM(tiny()).eval()
    x = torch.randint(0, 97, (2, 13))
    plain, _ = model(x)
    elastic, _ = model(x, widths=[1.0] * 3)
    assert torch.equal(plain, elastic)
    # and through the runner: think mode (width 1, no exit) decodes the plain logits
    ecfg = ElasticConfig(enabled=True)
    ecfg.validate()
    r = el.ElasticRunner(model, ecfg, el.Policy([1.0] * 3))
    outs = [r.prefill(x[:1, :5])]
    outs += [r.step(x[:1, t : t + 1]) for t in range(5, 13)]
    state = model.init_state(1)
    ref = [model(x[:1, :5], state=state)[0][:, -1]]
    ref += [model(x[:1, t : t + 1], state=state)[0][:, -1] for t in range(5, 13)]
    assert all(torch.equal(a, b) for a, b in zip(outs, ref))


@pytest.mark.parametrize("width", [0.125, 0.5])
def test_narrow_decode_with_cache_equals_full_forward_at_width(width):
    torch.manual_seed(0)
    model = LM(tiny(attn={"window": 6})).eval()
    x = torch.randint(0, 97, (1, 20))
    full, _ = model(x, widths=[width] * 3)
    ecfg = ElasticConfig(enabled=True)
    r = el.ElasticRunner(model, ecfg, el.Policy([width] * 3))
    outs = [r.prefill(x[:, :7])]
    outs += [r.step(x[:, t : t + 1]) for t in range(7, 19)]
    torch.testing.assert_close(torch.stack(outs, 1)[0], full[0, 6:19], atol=1e-5, rtol=1e-5)
    held, full_bytes = r.kv_bytes()
    assert 0 < held < full_bytes  # narrow widths store fewer KV heads


def test_matryoshka_cache_slices_down_never_pads_up():
    torch.manual_seed(0)
    a = Attention(tiny())
    cache = MatryoshkaKVCache(1, 2, 8, "cpu", torch.float32)
    cache.reserve_heads(2)  # widest width first
    x = torch.randn(1, 6, 64)
    narrow_then = a(x[:, :4], cache, width=0.25)  # stores both KV heads, reads one
    step = a(x[:, 4:], cache, width=0.25)
    ref = a(x, width=0.25)
    torch.testing.assert_close(torch.cat([narrow_then, step], 1), ref, atol=1e-5, rtol=1e-5)
    assert cache.heads == 2 and cache.nbytes() == 2 * 2 * 6 * 8 * 4
    grow = MatryoshkaKVCache(1, 2, 8, "cpu", torch.float32)
    a(x[:, :3], grow, width=0.25)
    assert grow.heads == 1
    with pytest.raises(AdambaError, match="cannot widen"):
        a(x[:, 3:4], grow, width=1.0)


def test_bad_width_threshold_and_mode_errors():
    ecfg = ElasticConfig(enabled=True)
    with pytest.raises(AdambaError, match="not a configured width"):
        el.check_width(0.3, ecfg)
    with pytest.raises(AdambaError, match="exit_threshold"):
        load_config(None, ["elastic.exit_threshold=1.5"])
    with pytest.raises(AdambaError, match="elastic.widths"):
        load_config(None, ["elastic.widths=[0.5, 2.0]"])
    model = LM(tiny())
    with pytest.raises(AdambaError, match="not a configured width"):
        el.ElasticRunner(model, ecfg, el.Policy([0.3] * 3))
    with pytest.raises(AdambaError, match=r"\[0, 1\]"):
        el.ElasticRunner(model, ecfg, el.Policy([1.0] * 3, exit_threshold=-0.1))
    with pytest.raises(AdambaError, match="trained with Matryoshka"):
        el.policy_from_mode(model, ElasticConfig(enabled=False), "ghost")
    with pytest.raises(AdambaError, match="unknown compute mode"):
        el.mode_width("turbo", ecfg)


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.helpers import make_tiny_data

    return make_tiny_data(tmp_path_factory.mktemp("data"))


def elastic_overrides(data, out, steps=8):
    from tests.helpers import tiny_overrides

    return tiny_overrides(data, out, steps) + [
        "model.d_model=64",
        "model.attn.n_head=4",
        "model.attn.n_kv_head=2",
        "elastic.enabled=true",
        "elastic.widths=[0.25, 0.5, 1.0]",
        "elastic.gate_token_frac=0.5",
        "elastic.calibrate_steps=2",
        "train.eval_every=0",
    ]


@pytest.mark.parametrize("gate_hidden", [0, 16])
def test_sandwich_loss_trains_all_widths_and_heads(gate_hidden):
    torch.manual_seed(0)
    cfg = tiny(n_layer=2)
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS, gate_token_frac=1.0, gate_hidden=gate_hidden)
    model = el.attach_elastic(LM(cfg), ecfg)
    x = torch.randint(0, 97, (2, 12))
    y = torch.randint(0, 97, (2, 12))
    y[1, 6:] = -100  # padding is masked out of every term
    total, full = el.elastic_loss(model, x, y, ecfg)
    _, ref = model(x, y)
    assert torch.equal(full, ref)
    total.backward()
    heads = model.elastic
    assert all(p.grad.abs().sum() > 0 for p in heads.gates[0].parameters())
    assert heads.predictor[0].weight.grad.abs().sum() > 0
    # the narrow prefix of units is trained by every width, the rest only by the full width
    n = model.blocks[0].mlp.units_at(min(WIDTHS))
    g = model.blocks[0].mlp.w_up.weight.grad
    assert g[:n].abs().sum() > 0 and g[n:].abs().sum() > 0


def test_sandwich_trains_the_expansion_schedule(monkeypatch):
    """With expand_train=1 every step's third member is a narrow-then-full schedule (the one
    auto's expansion runs): run_layers sees it, and its loss joins the LM terms."""
    torch.manual_seed(0)
    L = 4
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS, expand_layers=2, expand_train=1.0)
    model = el.attach_elastic(LM(tiny(n_layer=L)), ecfg)
    seen = []
    real = el.run_layers
    monkeypatch.setattr(
        el, "run_layers", lambda m, x, ws, keep=False: seen.append(list(ws)) or real(m, x, ws, keep)
    )
    x, y = torch.randint(0, 97, (2, 12)), torch.randint(0, 97, (2, 12))
    for _ in range(4):
        total, _ = el.elastic_loss(model, x, y, ecfg)
    sched = [s for s in seen if len(set(s)) > 1]
    assert len(sched) == 4 and all(s[2:] == [1.0, 1.0] and s[0] < 1.0 and len(set(s[:2])) == 1 for s in sched)
    total.backward()  # the schedule's loss reaches the narrow prefix and the full last layers
    assert model.blocks[L - 1].mlp.w_up.weight.grad.abs().sum() > 0
    seen.clear()
    el.elastic_loss(model, x, y, ElasticConfig(enabled=True, widths=WIDTHS, expand_train=0.0))
    assert all(len(set(s)) == 1 for s in seen)
    with pytest.raises(AdambaError, match="expand_train"):
        ElasticConfig(enabled=True, expand_train=1.5).validate()


def test_predictor_target_relative_or_in_nats():
    """The predictor's 'good enough' target: by default an absolute margin of 0.04 nats over the
    full width's loss (low-loss text is judged as leniently as high-loss text), relative with
    predictor_tol_nats=false."""
    full = torch.tensor([0.30, 0.30, 3.00, 3.00])
    narrow = torch.tensor([0.302, 0.33, 3.02, 3.10])
    rel = el.predictor_target(narrow, full, ElasticConfig(predictor_tol=0.01, predictor_tol_nats=False))
    nats = el.predictor_target(narrow, full, ElasticConfig())
    assert rel.tolist() == [1.0, 0.0, 1.0, 0.0]  # 1%: 0.003 nats at loss 0.3, 0.03 at loss 3
    assert nats.tolist() == [1.0, 1.0, 1.0, 0.0]  # 0.04 nats at any loss


def test_predictor_reads_a_prompt_and_is_scored_on_its_continuation(monkeypatch):
    """The predictor's input is the pooled state of a prompt (a prefix of the row, as auto reads
    it at inference), equal to running that prefix alone through the first layer."""
    torch.manual_seed(0)
    T = 16
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS, predictor_layer=1)
    model = el.attach_elastic(LM(tiny(n_layer=3)), ecfg)
    seen = []
    real = model.elastic.predictor_logits
    monkeypatch.setattr(model.elastic, "predictor_logits", lambda pooled: seen.append(pooled) or real(pooled))
    x, y = torch.randint(0, 97, (2, T)), torch.randint(0, 97, (2, T))
    with torch.no_grad():
        prefixes = {
            P: model.blocks[0](model.embed(x[:, :P]), None, 1.0).float().mean(1) for P in range(1, T + 1)
        }
    lengths = set()
    for _ in range(12):
        el.elastic_loss(model, x, y, ecfg)
        match = [P for P, ref in prefixes.items() if torch.allclose(seen[-1], ref, atol=1e-5)]
        assert len(match) == 1 and 4 <= match[0] <= T // 2
        lengths.add(match[0])
    assert len(lengths) > 1  # the prompt length varies from step to step


def test_gate_and_predictor_do_not_move_lm_weights():
    torch.manual_seed(0)
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS, gate_token_frac=1.0)
    model = el.attach_elastic(LM(tiny(n_layer=2)), ecfg)
    x, y = torch.randint(0, 97, (2, 12)), torch.randint(0, 97, (2, 12))
    torch.manual_seed(5)
    a, _ = el.elastic_loss(model, x, y, ecfg)
    a.backward()
    g_with = model.blocks[0].mlp.w_up.weight.grad.clone()
    model.zero_grad()
    torch.manual_seed(5)
    b, _ = el.elastic_loss(
        model,
        x,
        y,
        ElasticConfig(
            enabled=True, widths=WIDTHS, gate_token_frac=1.0, gate_weight=0.0, predictor_weight=0.0
        ),
    )
    b.backward()
    assert torch.equal(g_with, model.blocks[0].mlp.w_up.weight.grad)
    assert a > b  # the head terms were there


def test_head_settings_leave_the_lm_bit_identical(data, tmp_path):
    """The gate and predictor clip their gradients on their own norm: runs that differ only in
    the heads' loss weights and the predictor's tolerance train the same LM, bit for bit, with
    the clip active at every step (a shared norm would let the heads shrink the LM's steps)."""
    from adamba.checkpoint import load_model
    from adamba.train import trainer

    models = []
    for name, extra in (
        ("a", ["elastic.predictor_tol=0.01", "elastic.predictor_tol_nats=false"]),
        ("b", ["elastic.predictor_weight=5.0", "elastic.gate_weight=5.0"]),
    ):
        over = elastic_overrides(data, tmp_path / name, steps=4) + ["train.grad_clip=0.01"] + extra
        res = trainer.run(load_config("tiny-cpu", over))
        models.append(load_model(tmp_path / name)[0].state_dict())
        assert all(r["grad_norm"] > 0.01 for r in read_rows(tmp_path / name))  # clipped every step
    lm = [k for k in models[0] if not k.startswith("elastic.")]
    assert lm and all(torch.equal(models[0][k], models[1][k]) for k in lm)
    assert not all(torch.equal(models[0][k], models[1][k]) for k in models[0] if k.startswith("elastic."))
    assert res.steps == 4


def read_rows(run_dir):
    from adamba.train.monitor import read_metrics

    return [r for r in read_metrics(run_dir / "metrics.jsonl") if "grad_norm" in r]


def test_elastic_training_resume_is_exact(data, tmp_path, monkeypatch):
    from adamba import checkpoint as ck
    from adamba.data.loader import TokenLoader
    from adamba.train import trainer
    from adamba.train.monitor import read_metrics

    trainer.run(load_config("tiny-cpu", elastic_overrides(data, tmp_path / "a")))
    real_next = TokenLoader.__next__
    calls = {"n": 0}

    def flaky_next(self):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return real_next(self)

    monkeypatch.setattr(TokenLoader, "__next__", flaky_next)
    with pytest.raises(KeyboardInterrupt):
        trainer.run(load_config("tiny-cpu", elastic_overrides(data, tmp_path / "b")))
    monkeypatch.setattr(TokenLoader, "__next__", real_next)
    trainer.run(load_config("tiny-cpu", elastic_overrides(data, tmp_path / "b")), resume=True)
    rows = [read_metrics(tmp_path / r / "metrics.jsonl") for r in ("a", "b")]
    a, b = ([(r["step"], r["loss"]) for r in rs] for rs in rows)
    assert a == b and len(a) == 8
    assert a[-1][1] < a[0][1]
    ckpt = ck.read_checkpoint(tmp_path / "a")
    assert ckpt.cfg.elastic.enabled
    from adamba.checkpoint import load_model

    model, _, _ = load_model(tmp_path / "a")  # gate/predictor weights load back
    assert hasattr(model, "elastic")


# ---------------------------------------------------------------- CLI, modes, efficiency


@pytest.fixture(scope="module")
def elastic_run(data, tmp_path_factory):
    from adamba.train import trainer

    root = tmp_path_factory.mktemp("elastic_run")
    trainer.run(load_config("tiny-cpu", elastic_overrides(data, root / "el", steps=4)))
    from tests.helpers import tiny_overrides

    trainer.run(load_config("tiny-cpu", tiny_overrides(data, root / "dense", steps=2)))
    return root


def test_generate_text_in_every_mode(elastic_run):
    from adamba.checkpoint import load_model
    from adamba.serve.generate import generate_text

    model, tok, _ = load_model(elastic_run / "el")
    flops = {}
    for mode in el.MODES:
        stats: dict = {}
        text = "".join(generate_text(model, tok, "def ", 12, 0.0, None, 0, mode=mode, stats=stats))
        assert isinstance(text, str) and stats["tokens"] >= 1
        flops[mode] = stats["flops_rel"]
        if mode == "think":  # full width, no exit: the plain model's greedy text
            assert text == "".join(generate_text(model, tok, "def ", 12, 0.0, None, 0))
            assert stats["kv_bytes"] == stats["kv_bytes_full"]
    assert flops["ghost"] < flops["normal"] < flops["think"] == pytest.approx(1.0)


def test_cli_mode_and_efficiency(elastic_run):
    from tests.test_cli import adamba, assert_clean_error

    res = adamba("sample", "--ckpt", str(elastic_run / "el"), "--mode", "ghost", "--max-new-tokens", "5")
    assert res.returncode == 0, res.stderr
    assert "ghost:" in res.stderr and "FLOPs/token" in res.stderr
    res = adamba("sample", "--ckpt", str(elastic_run / "dense"), "--mode", "auto", "--max-new-tokens", "5")
    assert_clean_error(res, "trained with Matryoshka")
    res = adamba("eval", "--ckpt", str(elastic_run / "el"), "--tasks", "efficiency", "--batches", "2")
    assert res.returncode == 0, res.stderr
    rows = {
        ln.split()[0]: ln.split()
        for ln in res.stdout.splitlines()
        if ln.split() and ln.split()[0] in el.MODES
    }
    assert set(rows) == set(el.MODES)
    assert float(rows["think"][2]) == pytest.approx(1.0) and float(rows["ghost"][2]) < 0.5
    # the same sequences decoded two at a time: the same bits/byte and FLOPs for every mode
    res = adamba(
        "eval",
        "--ckpt",
        str(elastic_run / "el"),
        "--tasks",
        "efficiency",
        "--batches",
        "2",
        "--decode-batch",
        "2",
    )
    assert res.returncode == 0, res.stderr
    assert "decode batch 2" in res.stdout
    rows2 = {
        ln.split()[0]: ln.split()
        for ln in res.stdout.splitlines()
        if ln.split() and ln.split()[0] in el.MODES
    }
    for mode in el.MODES:  # bpb, FLOPs, exit rate (batched matmuls may differ in the last bits)
        assert [float(v) for v in rows2[mode][1:4]] == pytest.approx(
            [float(v) for v in rows[mode][1:4]], abs=2e-3
        )
    res = adamba("eval", "--ckpt", str(elastic_run / "el"), "--tasks", "efficiency", "--decode-batch", "0")
    assert_clean_error(res, "decode-batch")
    res = adamba("eval", "--ckpt", str(elastic_run / "dense"), "--tasks", "efficiency")
    assert_clean_error(res, "trained with Matryoshka")


def test_early_exit_copies_kv_forward_calm_style():
    """A token that exits at layer l still leaves a KV entry in every later layer, computed from
    its exit hidden state: later tokens attend to it exactly as if that state were the input."""
    torch.manual_seed(0)
    cfg = tiny(n_layer=3)
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS, gate_hidden=0)  # linear gates: bias decides
    model = el.attach_elastic(LM(cfg), ecfg).eval()
    with torch.no_grad():  # gate of layer 0 always fires, layer 1 never
        model.elastic.gates[0].bias.fill_(20.0)
        model.elastic.gates[1].bias.fill_(-20.0)
    x = torch.randint(0, 97, (1, 6))
    r = el.ElasticRunner(model, ecfg, el.Policy([1.0] * 3, exit_threshold=0.95))
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


def test_exit_loss_trains_early_layers_only():
    """exit_loss_weight adds intermediate-layer CE: it moves the layers below the last one and
    leaves the last layer's gradient untouched (no intermediate state depends on it)."""
    torch.manual_seed(0)
    model = el.attach_elastic(LM(tiny(n_layer=3)), ElasticConfig(enabled=True, widths=WIDTHS))
    x, y = torch.randint(0, 97, (2, 12)), torch.randint(0, 97, (2, 12))
    grads, totals = {}, {}
    for wgt in (0.0, 0.5):
        ecfg = ElasticConfig(enabled=True, widths=WIDTHS, gate_token_frac=1.0, exit_loss_weight=wgt)
        model.zero_grad()
        torch.manual_seed(5)
        total, _ = el.elastic_loss(model, x, y, ecfg)
        total.backward()
        totals[wgt] = float(total.detach())
        grads[wgt] = [b.mlp.w_up.weight.grad.clone() for b in model.blocks]
    assert totals[0.5] > totals[0.0]
    assert not torch.allclose(grads[0.5][0], grads[0.0][0])
    assert torch.equal(grads[0.5][2], grads[0.0][2])
    with pytest.raises(AdambaError, match="exit_loss_weight"):
        ElasticConfig(enabled=True, exit_loss_weight=-1.0).validate()


def test_gate_full_only_changes_gate_targets_not_lm_gradients():
    """gate_full_only: the gate learns from the full-width pass alone; the LM's gradients are
    the same either way (gate inputs are detached)."""
    torch.manual_seed(0)
    model = el.attach_elastic(LM(tiny(n_layer=3)), ElasticConfig(enabled=True, widths=WIDTHS))
    x, y = torch.randint(0, 97, (2, 12)), torch.randint(0, 97, (2, 12))
    gate, lm = {}, {}
    for full_only in (False, True):
        ecfg = ElasticConfig(enabled=True, widths=WIDTHS, gate_token_frac=1.0, gate_full_only=full_only)
        model.zero_grad()
        torch.manual_seed(5)
        el.elastic_loss(model, x, y, ecfg)[0].backward()
        gate[full_only] = model.elastic.gates[0][0].weight.grad.clone()
        lm[full_only] = model.blocks[0].mlp.w_up.weight.grad.clone()
    assert torch.equal(lm[False], lm[True])
    assert not torch.allclose(gate[False], gate[True])


def test_layer_flops_leave_out_the_head():
    """layer_flops_rel excludes the LM head every token pays: for a narrow mode it is below the
    whole-token ratio, at full width both are 1."""
    torch.manual_seed(0)
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS)
    model = el.attach_elastic(LM(tiny(n_layer=3)), ecfg).eval()
    x = torch.randint(0, 97, (8,))
    for widths, narrow in (([min(WIDTHS)] * 3, True), ([1.0] * 3, False)):
        *_, summ, _ = el.teacher_forced(model, ecfg, el.Policy(widths), [x], 3)
        if narrow:
            assert summ["layer_flops_rel"] < summ["flops_rel"] < 1.0
        else:
            assert summ["layer_flops_rel"] == pytest.approx(1.0) and summ["flops_rel"] == pytest.approx(1.0)


def test_calibrate_gate_fits_agreement_and_freezes_the_lm():
    """The gate-calibration phase lowers the gate's BCE against the model's own agreement,
    ignores padding, and leaves every LM weight bit-identical."""
    torch.manual_seed(0)
    model = el.attach_elastic(LM(tiny(n_layer=3)), ElasticConfig(enabled=True, widths=WIDTHS, gate_hidden=16))
    lm_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("elastic.")}
    gate_before = [p.clone() for p in model.elastic.gates.parameters()]
    x = torch.randint(0, 97, (4, 16))
    y = torch.randint(0, 97, (4, 16))
    y[:, -4:] = -100

    def batches():
        while True:
            yield x, y

    losses = el.calibrate_gate(model, batches(), steps=60)
    assert len(losses) == 60 and losses[-1] < 0.7 * losses[0]
    for k, v in model.state_dict().items():
        if not k.startswith("elastic."):
            assert torch.equal(v, lm_before[k]), k
    assert any(not torch.equal(a, b) for a, b in zip(gate_before, model.elastic.gates.parameters()))
    assert model.training  # restored
    # per-width gates: the narrow width's gate learned that width's own agreement, which the
    # full-width gate does not predict as well
    heads = model.elastic
    assert heads.narrow == WIDTHS[:-1] and len(heads.width_gates) == len(WIDTHS) - 1
    with torch.no_grad():
        hs, agree = el.layer_agreement(model.eval(), x, 0.125)
        valid = y != -100

        def fit(width):
            return sum(
                torch.nn.functional.binary_cross_entropy_with_logits(
                    heads.gate_logit(i, h, width)[valid], a[valid].float()
                )
                for i, (h, a) in enumerate(zip(hs, agree))
            )

        assert fit(0.125) < 0.8 * fit(1.0)
        assert not torch.equal(heads.gate_logit(0, hs[0], 0.125), heads.gate_logit(0, hs[0], 1.0))


def test_calibrate_gate_reuses_each_batch_and_decays_the_rate(monkeypatch):
    """calibrate_gate(reuse=k): one forward of the frozen model per k steps (each narrow width
    in turn per forward), a cosine rate from lr to ~0, and a clear error for reuse < 1."""
    torch.manual_seed(0)
    model = el.attach_elastic(LM(tiny(n_layer=3)), ElasticConfig(enabled=True, widths=WIDTHS, gate_hidden=16))
    drawn, seen, rates = [], [], []
    real = el.layer_agreement

    def batches():
        while True:
            drawn.append(1)
            yield torch.randint(0, 97, (2, 16)), torch.randint(0, 97, (2, 16))

    def spy(m, x, width=1.0):
        seen.append(width)
        return real(m, x, width)

    monkeypatch.setattr(el, "layer_agreement", spy)
    losses = el.calibrate_gate(
        model, batches(), steps=26, lr=1e-2, reuse=4, on_step=lambda i, l, lr: rates.append(lr)
    )
    assert len(losses) == 26 and len(drawn) == 7  # ceil(26 / 4) batches
    assert seen == [w for n in range(7) for w in (1.0, WIDTHS[n % 3])]  # full + one narrow per batch
    assert rates[0] == pytest.approx(1e-2) and rates[-1] < 1e-4 and rates == sorted(rates, reverse=True)
    with pytest.raises(AdambaError, match="reuse"):
        el.calibrate_gate(model, batches(), steps=2, reuse=0)
    with pytest.raises(AdambaError, match="calibrate_reuse"):
        ElasticConfig(enabled=True, calibrate_reuse=0).validate()


@pytest.mark.parametrize("mode", ["ghost", "think"])
def test_fixed_modes_decode_a_batch_like_one_sequence_at_a_time(mode):
    """A fixed-width runner decoding 3 sequences together gives each one's batch-1 logits."""
    torch.manual_seed(0)
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS)
    model = el.attach_elastic(LM(tiny(n_layer=3)), ecfg).eval()
    x = torch.randint(0, 97, (3, 9))
    pol = el.mode_policy(mode, model, ecfg)
    rb = el.ElasticRunner(model, ecfg, pol, batch=3)
    batched = [rb.prefill(x[:, :4])] + [rb.step(x[:, t : t + 1]) for t in range(4, 9)]
    for i in range(3):
        r1 = el.ElasticRunner(model, ecfg, pol)
        single = [r1.prefill(x[i : i + 1, :4])] + [r1.step(x[i : i + 1, t : t + 1]) for t in range(4, 9)]
        torch.testing.assert_close(
            torch.cat(single), torch.stack([b[i] for b in batched]), atol=1e-5, rtol=1e-5
        )
    with pytest.raises(AdambaError, match="rows"):
        rb2 = el.ElasticRunner(model, ecfg, pol, batch=2)
        rb2.prefill(x[:, :4])


def test_auto_decodes_a_batch_like_one_sequence_at_a_time():
    """Batched adaptive decoding (auto: a predicted width per row, per-token exit and expansion,
    copy-forward K/V for exited rows) gives every row the exit layers, expansions, widths and
    logits of batch-1 decoding; a model with a Mamba layer refuses it with a clear error."""
    torch.manual_seed(0)
    L, T, prompt, B = 4, 20, 4, 4
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS, expand_layers=2, expand_threshold=0.3)
    model = el.attach_elastic(LM(tiny(n_layer=L)), ecfg).eval()
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
        rb = el.ElasticRunner(model, ecfg, pol, batch=B)
        rb.max_wide, rb.dense = max_wide, dense
        batched = [rb.prefill(x[:, :prompt])] + [rb.step(x[:, t : t + 1]) for t in range(prompt, T)]
        if pol.widths is None:
            assert len(set(rb.row_widths)) >= 2  # rows really run at different widths
        if pol.widths is None and not dense:
            assert (rb.masks_a is not None) if max_wide == 0 else (rb.masks_a is None and rb.wide)
        assert (rb.dense_plan is not None) == dense
        sb = rb.stats
        for b in range(B):
            r1 = el.ElasticRunner(model, ecfg, pol)
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
    hybrid = el.attach_elastic(LM(tiny(n_layer=2, pattern="AM")), ecfg)
    with pytest.raises(AdambaError, match="attention-only"):
        el.ElasticRunner(hybrid, ecfg, pol, batch=2)


def test_batched_exits_equal_token_by_token_decoding():
    """batched_exits (n_layer batched passes) makes the runner's exit decisions and gives its
    logits at every decoded position, with the real gate deciding."""
    torch.manual_seed(0)
    L, T, prompt = 4, 24, 4
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS)
    model = el.attach_elastic(LM(tiny(n_layer=L)), ecfg).eval()
    with torch.no_grad():  # spread the gate so some tokens exit at various layers
        for p in model.elastic.gates.parameters():
            torch.nn.init.normal_(p, 0, 0.5)
    x = torch.randint(0, 97, (2, T))
    thr = 0.7
    h, exit_at = el.batched_exits(model, x, [1.0] * L, thr, start=prompt)
    logits = model.head(model.norm(h))
    hist = torch.bincount(exit_at[:, prompt:].flatten(), minlength=L)
    assert (hist[: L - 1] > 0).sum() >= 2 and hist[L - 1] > 0  # a real mix of exit layers
    assert (exit_at[:, :prompt] == L - 1).all()
    for b in range(2):
        r = el.ElasticRunner(model, ecfg, el.Policy([1.0] * L, exit_threshold=thr))
        r.prefill(x[b : b + 1, :prompt])
        steps = [r.step(x[b : b + 1, t : t + 1]) for t in range(prompt, T)]
        assert r.stats.exit_layer == exit_at[b, prompt:].tolist()
        torch.testing.assert_close(torch.cat(steps), logits[b, prompt:], atol=1e-5, rtol=1e-5)


def test_auto_applies_the_predicted_width_uniformly():
    """auto mode: the predictor's smallest 'good enough' width runs in every layer (the uniform
    schedules sandwich training teaches), so the prefill equals the plain forward at that width."""
    torch.manual_seed(0)
    L = 3
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS)
    model = el.attach_elastic(LM(tiny(n_layer=L)), ecfg).eval()
    good = torch.tensor([-9.0, 9.0, 9.0, 9.0])  # 0.125 not good enough, 0.25 is
    model.elastic.predictor_logits = lambda pooled: good.expand(pooled.shape[0], L, 4)
    x = torch.randint(0, 97, (1, 7))
    r = el.ElasticRunner(model, ecfg, el.Policy(None))
    out = r.prefill(x)
    assert r.widths == [0.25] * L
    with torch.no_grad():
        ref, _ = model(x, widths=[0.25] * L)
    torch.testing.assert_close(out, ref[:, -1])
    model.elastic.predictor_logits = lambda pooled: torch.full((pooled.shape[0], L, 4), -9.0)
    r = el.ElasticRunner(model, ecfg, el.Policy(None))
    r.prefill(x)
    assert r.widths == [1.0] * L  # nothing predicted good: full width


def test_trainer_gate_calibration_phase_runs_once(data, tmp_path):
    """elastic.calibrate_steps: after the LM steps the trainer refits the gate with the LM
    frozen, records it in the checkpoint and the metrics, and a resumed run does not redo it."""
    from adamba import checkpoint as ck
    from adamba.train import trainer

    over = elastic_overrides(data, tmp_path / "c", steps=3) + [
        "elastic.calibrate_steps=4",
        "elastic.calibrate_reuse=1",
    ]
    trainer.run(load_config("tiny-cpu", over + ["elastic.calibrate_steps=0"]))
    plain = ck.read_checkpoint(tmp_path / "c")
    assert plain.state["gate_calibrated"] == 0
    from safetensors.torch import load_file

    before = load_file(str(plain.path / "model.safetensors"))
    trainer.run(load_config("tiny-cpu", over), resume=True)  # at max_steps: only the phase runs
    ckpt = ck.read_checkpoint(tmp_path / "c")
    assert ckpt.state["gate_calibrated"] == 4 and ckpt.state["step"] == 3
    after = load_file(str(ckpt.path / "model.safetensors"))
    for k, v in before.items():  # the LM is frozen, the gate moved
        assert torch.equal(v, after[k]) == (not k.startswith(("elastic.gates", "elastic.width_gates"))), k
    assert 0 < ckpt.state["gate_calibration_loss"] < 1.0
    trainer.run(load_config("tiny-cpu", over), resume=True)  # done already: nothing changes
    again = load_file(str(ck.read_checkpoint(tmp_path / "c").path / "model.safetensors"))
    assert all(torch.equal(after[k], again[k]) for k in after)


def test_benchmark_fixed_step_matches_runner():
    """`elastic.py compile-speed` times `fixed_step` (a pure function over preallocated caches,
    for torch.compile) against ElasticRunner: run eagerly it must give the runner's logits at
    every width and position, or the compiled speed-up would compare different work."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "elastic.py"
    spec = importlib.util.spec_from_file_location("bench_elastic", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    model = LM(tiny()).eval()
    ecfg = ElasticConfig(enabled=True, widths=WIDTHS)
    seqs = torch.randint(0, 97, (3, 12))
    with torch.no_grad():
        for w in WIDTHS:
            r = el.ElasticRunner(model, ecfg, el.Policy([w] * 3), batch=3)
            r.prefill(seqs[:, :5])
            ks, vs = bench.prompt_caches(r, 12)
            step = bench.fixed_step(model, w)
            for t in range(5, 12):
                got, want = step(seqs[:, t : t + 1], ks, vs, t), r.step(seqs[:, t : t + 1])
                torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
