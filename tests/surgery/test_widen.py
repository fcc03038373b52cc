"""widen keeps the function: the widened model's logits equal the old model's (to 1e-4, on
models whose every weight is random, so a misplaced row, a missing 1/f or a wrong gain shows)
for duplication (x2) and zero-growth (x1.5, x1.25) of dense attention, GQA + QK-norm + SwiGLU,
tied embeddings, Mamba2 hybrids and MoE layers; noise breaks the copies' symmetry and not the
function; old heads and units stay the first slice; the checkpoint written by the CLI loads and
trains from the old model's loss."""

import json
import math

import pytest
import torch

from adamba.checkpoint import load_model
from adamba.config import load_config
from adamba.errors import AdambaError
from adamba.model.lm import LM
from adamba.surgery.widen import widen, widen_checkpoint
from adamba.train.monitor import read_metrics
from tests.helpers import model_config, tiny_overrides

BASE = dict(vocab_size=97, d_model=32, n_layer=2, max_seq_len=32)
MAMBA = {"d_state": 8, "head_dim": 16, "chunk_size": 8}
GQA = dict(attn={"n_head": 4, "n_kv_head": 2, "qk_norm": True}, mlp={"act": "swiglu"})


@torch.no_grad()
def random_lm(**kw) -> LM:
    """Every parameter random (gains, biases, QK-norm weights, Mamba time constants included) and
    logits of order 1, so every mapping shows in the logits."""
    torch.manual_seed(0)
    model = LM(model_config(BASE, **kw))
    for name, p in model.named_parameters():
        if name.endswith(("gate_up_proj", "down_proj")):
            p.normal_(0, p.shape[-2] ** -0.5)
        elif p.ndim >= 2:
            p.normal_(0, p.shape[-1] ** -0.5)
        elif name.endswith(("A_log", "dt_bias", "bias", "sinks")):
            p.add_(0.3 * torch.randn_like(p))
        else:
            p.uniform_(0.5, 1.5)
    return model.eval()


def logit_diff(a: LM, b: LM, widths=None) -> float:
    x = torch.randint(0, a.cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        la = a(x)[0]
        lb = b(x, widths=widths)[0]
    assert la.abs().max() > 0.3  # logits large enough for a wrong mapping to show
    return float((la - lb).abs().max())


def test_dense_relu2_duplicated():
    model = random_lm(attn={"n_head": 4, "n_kv_head": 4})
    wide, rec = widen(model, 64)
    assert logit_diff(model, wide) < 1e-4 and rec["max_abs_logit_diff"] < 1e-4
    assert (rec["method"], rec["mlp_method"], rec["n_head"], rec["mlp_hidden"]) == (
        "duplicate",
        "duplicate",
        [4, 8],
        [128, 256],
    )
    assert wide.cfg.d_model == 64 and wide.cfg.attn.head_dim == 8 and wide.blocks[0].mlp.hidden == 256
    assert rec["set"] == [
        "model.d_model=64",
        "model.attn.n_head=8",
        "model.attn.n_kv_head=8",
        "model.kda.n_head=8",
    ]
    # the stream is the old one tiled (first 32 dims = the old stream), readers divided by 2
    o, w = model.state_dict(), wide.state_dict()
    assert torch.equal(w["embed.weight"], o["embed.weight"].repeat(1, 2))
    assert torch.equal(w["blocks.0.norm1.weight"], o["blocks.0.norm1.weight"].repeat(2))
    assert torch.allclose(w["head.weight"], o["head.weight"].repeat(1, 2) / 2)
    # old heads / units are the first slice, their copies after them
    q, oq = w["blocks.0.mixer.qkv_proj.weight"], o["blocks.0.mixer.qkv_proj.weight"]
    assert torch.allclose(2 * q[:32, :32], oq[:32]) and torch.allclose(2 * q[32:64, 32:], oq[:32])
    wo, oo = w["blocks.1.mixer.o_proj.weight"], o["blocks.1.mixer.o_proj.weight"]
    assert torch.allclose(2 * wo[:32, :32], oo) and torch.allclose(wo[32:, 32:], wo[:32, :32])
    wd, od = w["blocks.1.mlp.w_down.weight"], o["blocks.1.mlp.w_down.weight"]
    assert torch.allclose(2 * wd[:32, :128], od) and torch.allclose(wd[:32, 128:], wd[:32, :128])


@pytest.mark.parametrize("d_model", [64, 48])
def test_gqa_qk_norm_swiglu(d_model):
    model = random_lm(**GQA)
    wide, rec = widen(model, d_model)
    assert logit_diff(model, wide) < 1e-4
    a = wide.blocks[0].mixer
    # GQA groups of 2 kept: x2 copies KV heads, x1.5 adds 2 query heads reading 1 new KV head
    assert (a.n_head, a.n_kv_head, a.head_dim) == ({64: (8, 4, 8), 48: (6, 3, 8)}[d_model])
    assert rec["method"] == ("duplicate" if d_model == 64 else "zero-grow")
    if d_model == 48:  # norm gains x sqrt(32/48) with eps x 32/48 keep every norm exact
        assert math.isclose(wide.cfg.norm_eps, model.cfg.norm_eps * 32 / 48)
        assert "model.norm_eps=" + repr(wide.cfg.norm_eps) in rec["set"]


def test_zero_grow_old_heads_and_units_are_the_first_slice():
    """At the Matryoshka width that keeps the old heads and units (4 of 6 heads, 128 of 192
    units), the zero-grown model is still the old model: the new ones come after and add 0."""
    model = random_lm(attn={"n_head": 4, "n_kv_head": 2})
    wide, rec = widen(model, 48)
    assert rec["n_head"] == [4, 6] and rec["mlp_hidden"] == [128, 192]
    assert logit_diff(model, wide, widths=[2 / 3] * 2) < 1e-4
    w = wide.state_dict()
    assert not w["embed.weight"][:, 32:].any() and not w["blocks.0.mixer.o_proj.weight"][32:].any()
    assert not w["blocks.0.mixer.o_proj.weight"][:, 32:].any()  # new heads' outputs start at 0
    assert not w["blocks.0.mlp.w_down.weight"][:, 128:].any()
    assert w["blocks.0.mlp.w_up.weight"][128:].abs().min() > 0  # fresh units: random inputs


@pytest.mark.parametrize("d_model", [64, 48])
def test_tied_embeddings(d_model):
    model = random_lm(tie_embeddings=True, attn={"n_head": 4, "n_kv_head": 1})
    wide, _ = widen(model, d_model)
    assert wide.head.weight is wide.embed.weight
    assert logit_diff(model, wide) < 1e-4


@pytest.mark.parametrize("d_model", [64, 48, 40])
def test_hybrid_mamba2(d_model):
    model = random_lm(pattern="AM", attn={"n_head": 4, "n_kv_head": 4}, mamba=MAMBA)
    wide, rec = widen(model, d_model)
    assert logit_diff(model, wide) < 1e-4
    assert rec["mamba_heads"] == [4, d_model // 8]
    m = wide.blocks[1].mixer
    assert m.d_inner == 2 * d_model and m.d_state == 8
    if d_model != 64:  # new channels' z rows 0: their gate silu(0) = 0
        assert not m.in_proj.weight[64 : m.d_inner].any()
    # an untrained model (default init: gated values near sqrt(eps)) is kept too: eps scaled
    torch.manual_seed(0)
    plain = LM(model.cfg).eval()
    assert logit_diff(plain, widen(plain, d_model)[0]) < 1e-5


def test_mamba2_groups():
    """Heads grow inside their B/C group (n_groups 2, norm per group)."""
    model = random_lm(pattern="MA", mamba={**MAMBA, "head_dim": 8, "n_groups": 2})
    for d_model in (64, 48):
        assert logit_diff(model, widen(model, d_model)[0]) < 1e-4


@pytest.mark.parametrize("d_model", [64, 48])
def test_moe(d_model):
    model = random_lm(ffn="DE", moe={"n_experts": 4, "top_k": 2, "ratio": 1.0})
    wide, rec = widen(model, d_model, noise=0.1 if d_model == 64 else 0.0)
    assert logit_diff(model, wide) < 1e-4
    assert rec["expert_hidden"] == [32, d_model] and wide.blocks[1].mlp.gate_up_proj.shape == (
        4,
        d_model,
        2 * d_model,
    )
    assert wide.cfg.moe.ratio == 1.0


@pytest.mark.parametrize("d_model", [64, 48])
def test_gpt_oss_style_attention(d_model):
    """Attention biases and sinks (GPT-OSS), sliding/full layers, MoE experts of the MLP's width."""
    attn = {"n_head": 4, "n_kv_head": 2, "bias": True, "sinks": True, "window": 8, "window_pattern": "SF"}
    model = random_lm(attn=attn, ffn="moe", moe={"n_experts": 4, "top_k": 2})
    wide, rec = widen(model, d_model, noise=0.05)
    assert logit_diff(model, wide) < 1e-4
    a = wide.blocks[0].mixer
    assert a.sinks.shape == (a.n_head,) and (a.window, wide.blocks[1].mixer.window) == (8, 0)
    assert rec["expert_hidden"] == rec["mlp_hidden"] == [128, 128 * d_model // 32]


def test_mlp_hidden_grows_on_its_own():
    model = random_lm(ffn="DE", moe={"n_experts": 4, "top_k": 2})  # experts as wide as the MLP
    for d_model, hidden, method in [(32, 256, "duplicate"), (64, 300, "zero-grow"), (48, 384, "duplicate")]:
        wide, rec = widen(model, d_model, hidden)
        assert logit_diff(model, wide) < 1e-4
        assert rec["mlp_hidden"] == [128, hidden] and rec["mlp_method"] == method
        assert wide.blocks[0].mlp.hidden == hidden and wide.blocks[1].mlp.hidden == hidden


def test_noise_keeps_the_function_and_breaks_the_copies():
    model = random_lm(pattern="AM", mamba=MAMBA, **GQA)
    plain, _ = widen(model, 64)
    noisy, rec = widen(model, 64, noise=0.1)
    assert logit_diff(model, noisy) < 1e-4 and rec["noise"] == 0.1
    p, n = plain.state_dict(), noisy.state_dict()
    for name, half in [
        ("blocks.0.mixer.o_proj.weight", 32),  # copies of heads
        ("blocks.0.mlp.w_down.weight", 128),  # copies of units
        ("blocks.1.mixer.out_proj.weight", 64),  # copies of Mamba channels
        ("blocks.0.mixer.qkv_proj.weight", 32),  # copies of the stream
    ]:
        a, b = n[name][..., :half], n[name][..., half : 2 * half]
        assert not torch.allclose(a, b), name
        old_sum = p[name][..., :half] + p[name][..., half : 2 * half]
        assert torch.allclose(a + b, old_sum, atol=1e-6), name  # the noise sums to 0
    assert torch.equal(n["embed.weight"], p["embed.weight"])  # what makes the stream copies: untouched


@pytest.mark.parametrize("d_model", [64, 48])
@pytest.mark.parametrize("gate_hidden", [0, 8])
def test_elastic_heads_widen_with_the_model(d_model, gate_hidden):
    """The gates (per width too) and the predictor read the widened stream: every logit kept."""
    from adamba.config import ElasticConfig
    from adamba.model.elastic import attach_elastic, run_layers

    model = random_lm(pattern="AM", mamba=MAMBA, **GQA)
    ecfg = ElasticConfig(enabled=True, widths=[0.5, 1.0], gate_per_width=True, gate_hidden=gate_hidden)
    attach_elastic(model, ecfg)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.elastic.parameters():
            p.normal_(0, 0.5)
    wide, rec = widen(model, d_model)
    assert rec["max_abs_logit_diff"] < 1e-4 and logit_diff(model, wide) < 1e-4
    x = torch.randint(0, 97, (2, 16))
    with torch.no_grad():
        (_, h), (_, hw) = (
            run_layers(model, x, [1.0, 1.0], keep=True),
            run_layers(wide, x, [1.0, 1.0], keep=True),
        )
        for w in (1.0, 0.5):
            a, b = model.elastic.gate_logit(0, h[0], w), wide.elastic.gate_logit(0, hw[0], w)
            assert a.abs().max() > 0.3 and (a - b).abs().max() < 1e-4
        a, b = model.elastic.predictor_logits(h[0].mean(1)), wide.elastic.predictor_logits(hw[0].mean(1))
        assert (a - b).abs().max() < 1e-4


def test_refusals():
    model = random_lm(**GQA)
    with pytest.raises(AdambaError, match="smaller|>= the model's d_model 32"):
        widen(model, 16)
    with pytest.raises(AdambaError, match=r"--d-model 40: .*valid values above 32: 48, 64, 80"):
        widen(model, 40)
    with pytest.raises(AdambaError, match="--mlp-hidden 64: .* >= the MLP's hidden width 128"):
        widen(model, 64, 64)
    with pytest.raises(AdambaError, match="nothing to widen"):
        widen(model, 32)
    with pytest.raises(AdambaError, match="--noise"):
        widen(model, 64, noise=-1.0)
    with pytest.raises(AdambaError, match="KDA .* not supported yet"):
        widen(LM(model_config(BASE, pattern="AK")), 64)


HYBRID = ["model.pattern=AM", "model.mamba.ffn=none"] + [f"model.mamba.{k}={v}" for k, v in MAMBA.items()]


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("widen") / "run"
    over = tiny_overrides(tiny_data, out, steps=2) + HYBRID + ["train.eval_every=0"]
    from adamba.train import trainer

    trainer.run(load_config("tiny-cpu", over))
    return out


def test_cli_end_to_end_and_training(trained, tiny_data, tmp_path, capsys):
    from adamba.cli import main
    from tests.cli.test_bad_args import cli_error

    out = tmp_path / "wide"
    main(["surgery", "widen", "--ckpt", str(trained), "--out", str(out), "--d-model", "48", "--noise", "0"])
    line = capsys.readouterr().out
    assert "widen (zero-grow): d_model 32 -> 48, heads 2 -> 3 (KV 1 -> 1)" in line
    assert "train.init_from=" in line and "--set model.d_model=48" in line
    model, _, _ = load_model(trained)
    wide, tok, ck = load_model(out)
    assert wide.cfg.d_model == 48 and tok.vocab_size == model.cfg.vocab_size
    assert logit_diff(model, wide) < 1e-4
    rec = json.loads((out / "surgery.json").read_text())
    assert rec["d_model"] == [32, 48] and rec["mamba_heads"] == [4, 6]
    assert ck.state["surgery"]["from"].endswith("step_000002") and ck.path.name == "step_000000"
    assert "not empty" in cli_error(
        capsys, "surgery", "widen", "--ckpt", str(trained), "--out", str(out), "--d-model", "64"
    )
    assert "valid values above 32: 48, 64" in cli_error(
        capsys, "surgery", "widen", "--ckpt", str(trained), "--out", str(tmp_path / "x"), "--d-model", "40"
    )
    assert not (tmp_path / "x").exists()  # a refused surgery writes nothing
    with pytest.raises(AdambaError, match="valid values"):  # ... and keeps an old --out
        widen_checkpoint(str(trained), str(out), 40, overwrite=True)
    assert json.loads((out / "surgery.json").read_text()) == rec
    # one training step from the widened checkpoint starts at the old model's loss
    runs = {}
    for name, src, sets in [("old", trained, []), ("wide", out, rec["set"])]:
        runs[name] = tmp_path / f"train-{name}"
        over = tiny_overrides(tiny_data, runs[name], steps=1) + HYBRID + sets
        over += [f"train.init_from={src}", "train.eval_every=0", "train.log_every=1"]
        main(["train", "--config", "tiny-cpu", *[a for o in over for a in ("--set", o)]])
    capsys.readouterr()
    old, new = (read_metrics(runs[n] / "metrics.jsonl")[0]["loss"] for n in ("old", "wide"))
    assert abs(old - new) < 1e-4 * old
    trained_wide, _, _ = load_model(runs["wide"])
    assert trained_wide.cfg.d_model == 48


def test_widen_checkpoint_overwrite(trained, tmp_path):
    out = tmp_path / "w"
    widen_checkpoint(str(trained), str(out), 64)
    path = widen_checkpoint(str(trained), str(out), 64, mlp_hidden=384, noise=0.05, overwrite=True)
    rec = json.loads((out / "surgery.json").read_text())
    assert rec["mlp_hidden"] == [128, 384] and rec["noise"] == 0.05 and path.name == "step_000000"
    assert load_model(out)[0].blocks[0].mlp.hidden == 384


def test_help(capsys):
    from adamba.cli import main

    with pytest.raises(SystemExit):
        main(["surgery", "widen", "--help"])
    text = capsys.readouterr().out
    assert "--d-model" in text and "--mlp-hidden" in text and "--noise" in text


def test_plan_presets_are_what_widening_makes():
    """plan-d32 widened to 2560 is plan-d2560's model, and that widened to 4096 is plan-d4096's
    (heads, MLP, Mamba2 and norm_eps included), so train.init_from accepts each surgery's output."""
    from adamba.config import load_config
    from adamba.surgery.widen import plan_widen, widened_config

    model = load_config("plan-d32").model
    for nxt, d in (("plan-d2560", 2560), ("plan-d4096", 4096)):
        grown, want = widened_config(model, plan_widen(model, d)), load_config(nxt).model
        assert grown == want.validate(), nxt
        model = want
