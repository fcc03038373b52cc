"""GPT-OSS import: a tiny random GptOssForCausalLM (sliding + full layers with a window shorter
than the sequence, YaRN as GPT-OSS uses it, sinks and biases randomised) converted by
adamba.hf.gpt_oss.to_adamba gives the same logits and the same greedy tokens; MXFP4 expert weights
dequantise bit for bit as transformers does, in the layout the model multiplies with.

GPT-OSS export (export_hf -> gpt_oss.from_adamba): that model imported and exported again loads
with AutoModelForCausalLM with every weight identical; adamba-native MoE models (no sinks, no
biases: exported as NO_SINK sinks and zero biases) give the same logits and import back to the same
model; what GPT-OSS cannot compute is refused in one line."""

import importlib
import json
import re

import pytest
import torch

from adamba.checkpoint import load_model, save_checkpoint
from adamba.config import Config
from adamba.errors import AdambaError
from adamba.hf import gpt_oss
from adamba.hf.convert import export_hf, import_hf, lm_to_hf
from adamba.hf.mxfp4 import dequantize
from adamba.model import decode
from adamba.model.lm import LM
from tests.helpers import model_config

transformers = pytest.importorskip("transformers")

D, H, E = 64, 32, 4  # d_model, expert width (MXFP4 needs multiples of 32), experts
ROPE = {
    "rope_type": "yarn",
    "rope_theta": 150000.0,
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}


def hf_model(vocab_size: int = 64):
    from transformers import GptOssConfig, GptOssForCausalLM

    hc = GptOssConfig(
        vocab_size=vocab_size,
        hidden_size=D,
        intermediate_size=H,
        num_hidden_layers=3,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=12,
        sliding_window=4,
        num_local_experts=E,
        num_experts_per_tok=2,
        max_position_embeddings=131072,
        rope_parameters=dict(ROPE),
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
        attn_implementation="eager",
    )
    torch.manual_seed(0)
    model = GptOssForCausalLM(hc)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layernorm" in name or name == "model.norm.weight":
                p.copy_(1 + 0.1 * torch.randn_like(p))
            else:
                p.normal_(0, 0.3 if "experts" in name or "sinks" in name or "bias" in name else 0.1)
    return model.eval()


def saved(model, tmp_path):
    """config.json and the weights as save_pretrained writes them."""
    from safetensors.torch import load_file

    model.save_pretrained(tmp_path)
    return json.loads((tmp_path / "config.json").read_text()), load_file(tmp_path / "model.safetensors")


def test_logits_and_greedy_generation_equal_transformers(tmp_path):
    ref = hf_model()
    hf_cfg, sd = saved(ref, tmp_path)
    cfg, mapped = gpt_oss.to_adamba(hf_cfg, sd)
    a = cfg.attn
    assert (a.window, a.window_pattern, a.sinks, a.bias, a.qk_norm, a.rope_scaling) == (
        4,
        "SF",
        True,
        True,
        False,
        "yarn",
    )
    assert round(cfg.moe.ratio * cfg.d_model) == H and cfg.ffn == "moe"
    ours = LM(cfg)
    ours.load_state_dict(mapped, strict=True)
    ours.eval()
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))  # 16 > window 4
    with torch.no_grad():
        want = ref(x).logits
        got, _ = ours(x)
    diff = float((got - want).abs().max())
    assert diff < 1e-4, diff
    prompt = x[:1, :6]
    hf_tokens = ref.generate(prompt, max_new_tokens=8, do_sample=False)[0, 6:].tolist()
    our_tokens = [int(t[0]) for t in decode.generate(ours, prompt, 8, temperature=0.0)]
    assert our_tokens == hf_tokens


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.view({4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_dequantize_equals_transformers_bit_for_bit(dtype):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    g = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (3, 10, 4, 16), generator=g, dtype=torch.uint8)
    scales = torch.randint(0, 256, (3, 10, 4), generator=g, dtype=torch.uint8)  # every exponent
    want = convert_moe_packed_tensors(blocks, scales, dtype=dtype)  # [E, in, out]
    got = dequantize(blocks, scales, dtype, chunk=7)  # several chunks
    assert got.shape == (3, 10, 128)
    assert torch.equal(bits(got.transpose(1, 2).contiguous()), bits(want))


def test_mxfp4_experts_import_to_the_dequantised_weights(tmp_path):
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    ref = hf_model()
    hf_cfg, sd = saved(ref, tmp_path)
    hf_cfg["quantization_config"] = {
        "quant_method": "mxfp4",
        "modules_to_not_convert": ["model.layers.*.self_attn"],
    }
    g = torch.Generator().manual_seed(3)
    packed = {}
    for i in range(3):
        for name, (rows, cols) in {"gate_up_proj": (2 * H, D), "down_proj": (D, H)}.items():
            key = f"model.layers.{i}.mlp.experts.{name}"
            del sd[key]
            blocks = torch.randint(0, 256, (E, rows, cols // 32, 16), generator=g, dtype=torch.uint8)
            scales = torch.randint(118, 125, (E, rows, cols // 32), generator=g, dtype=torch.uint8)
            sd[key + "_blocks"], sd[key + "_scales"] = blocks, scales
            packed[key] = convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    cfg, mapped = gpt_oss.to_adamba(hf_cfg, sd)
    for key, want in packed.items():
        i, name = key.split(".")[2], key.split(".")[-1]
        assert torch.equal(bits(mapped[f"blocks.{i}.mlp.{name}"]), bits(want)), key
    ours = LM(cfg)
    ours.load_state_dict(mapped, strict=True)
    ours.eval()
    with torch.no_grad():  # the same weights in transformers' model: the layout is the one it multiplies
        for key, want in packed.items():
            ref.get_parameter(key).copy_(want)
        x = torch.randint(0, 64, (1, 10), generator=g)
        diff = float((ours(x)[0] - ref(x).logits).abs().max())
    assert diff < 1e-4, diff


def test_released_config_layout_gives_the_same_config():
    """The released config.json keeps rope_theta beside rope_scaling (no rope_parameters)."""
    ref_cfg = hf_model().config.to_dict()
    old = {k: v for k, v in ref_cfg.items() if k != "rope_parameters"}
    old["rope_theta"] = 150000.0
    old["rope_scaling"] = {k: v for k, v in ROPE.items() if k != "rope_theta"}
    assert gpt_oss.config(old) == gpt_oss.config(ref_cfg)
    all_full = dict(old, layer_types=["full_attention"] * 3)
    assert (gpt_oss.config(all_full).attn.window, gpt_oss.config(all_full).attn.window_pattern) == (0, "")


@pytest.mark.parametrize(
    "change, needle",
    [
        (
            {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}},
            "rope_type 'linear'",
        ),
        ({"layer_types": ["chunked_attention"] * 3}, "chunked_attention"),
        ({"quantization_config": {"quant_method": "gptq"}}, "quant_method='gptq'"),
        ({"sliding_window": None}, "sliding_window=None"),
    ],
)
def test_unsupported_settings_are_refused_in_one_line(change, needle):
    hf_cfg = {**hf_model().config.to_dict(), **change}
    with pytest.raises(AdambaError, match=needle) as e:
        gpt_oss.config(hf_cfg)
    assert "\n" not in str(e.value)


def test_a_missing_weight_is_named(tmp_path):
    hf_cfg, sd = saved(hf_model(), tmp_path)
    del sd["model.layers.1.self_attn.sinks"]
    with pytest.raises(AdambaError, match="model.layers.1.self_attn.sinks"):
        gpt_oss.to_adamba(hf_cfg, sd)
    del sd["model.layers.0.mlp.experts.down_proj"]
    with pytest.raises(AdambaError, match="down_proj_blocks"):
        gpt_oss.to_adamba(hf_cfg, sd)


def load_hf(path):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def max_diff(a, b, vocab: int, seq: int = 40) -> float:
    x = torch.randint(0, vocab, (2, seq), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        la, lb = (m(x).logits if hasattr(m, "config") else m(x)[0] for m in (a, b))
    return float((la - lb).abs().max())


def test_gpt_oss_imported_then_exported_is_the_same_model(tiny_data, tmp_path):
    ref = hf_model(vocab_size=400)  # the tiny_data tokenizer's vocabulary
    cfg, mapped = gpt_oss.to_adamba(*saved(ref, tmp_path / "src"))
    ours = LM(cfg)
    ours.load_state_dict(mapped, strict=True)
    save_checkpoint(tmp_path / "run", 0, ours, Config(model=cfg), tiny_data["tokenizer"])
    dst = export_hf(tmp_path / "run", tmp_path / "hf")
    record = json.loads((dst / "adamba_export.json").read_text())
    assert record["export"] == "gpt_oss" and record["max_abs_logit_diff"] < 1e-4, record
    back = load_hf(dst)
    assert type(back).__name__ == "GptOssForCausalLM"
    want, got = ref.state_dict(), back.state_dict()
    assert set(got) == set(want)
    assert all(torch.equal(got[k], want[k]) for k in want), [
        k for k in want if not torch.equal(got[k], want[k])
    ]
    for key in ("layer_types", "sliding_window", "rope_parameters", "head_dim", "max_position_embeddings"):
        assert getattr(back.config, key) == getattr(ref.config, key), key
    assert max_diff(back, ref, 400) < 1e-4  # 40 tokens > window 4


NATIVE = {
    "vocab_size": 400,
    "d_model": 32,
    "n_layer": 3,
    "ffn": "moe",
    "max_seq_len": 64,
    "attn": {"n_head": 4, "n_kv_head": 2, "qk_norm": False},
    "moe": {"n_experts": 4, "top_k": 2, "ratio": 1.5},
}


def randomised(model: LM, seed: int = 0) -> LM:
    """Every parameter drawn afresh, large enough that routing, windows and YaRN all matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            p.copy_(1 + 0.2 * noise if "norm" in name else 0.3 * noise)
    return model.eval()


@pytest.mark.parametrize(
    "kw",
    [
        {},  # full attention, plain RoPE: every layer full_attention, sliding_window unused
        {
            "tie_embeddings": True,
            "attn": {"window": 8, "window_pattern": "SFF", "rope_scaling": "yarn", "yarn_factor": 4.0},
            "moe": {"swiglu_alpha": 1.5, "swiglu_limit": 3.0},
        },
    ],
    ids=["full-rope", "windows-yarn-tied"],
)
def test_native_moe_model_exports_with_stand_in_sinks_and_biases(kw, tiny_data, tmp_path):
    for dtype in (torch.float32, torch.bfloat16, torch.float16):  # the stand-in sink adds exactly 0
        assert torch.exp(torch.tensor(gpt_oss.NO_SINK, dtype=dtype)) == 0
    cfg = model_config(NATIVE, **kw)
    assert not (cfg.attn.sinks or cfg.attn.bias)
    torch.manual_seed(0)
    model = randomised(LM(cfg))
    save_checkpoint(tmp_path / "run", 0, model, Config(model=cfg), tiny_data["tokenizer"])
    dst = export_hf(tmp_path / "run", tmp_path / "hf")
    hf = load_hf(dst)
    assert max_diff(hf, model, 400, seq=48) < 1e-4  # 48 tokens > window 8
    c, a = hf.config, cfg.attn
    window = a.window
    assert c.layer_types == [
        "sliding_attention" if window and a.window_at(i) else "full_attention" for i in range(3)
    ]
    assert c.sliding_window == (window or c.max_position_embeddings)
    assert c.head_dim == a.head_dim and c.intermediate_size == 48 and c.num_local_experts == 4
    assert (c.swiglu_alpha, c.swiglu_limit) == (cfg.moe.swiglu_alpha, cfg.moe.swiglu_limit)
    assert c.rope_parameters["rope_type"] == ("yarn" if a.rope_scaling else "default")
    assert c.tie_word_embeddings == cfg.tie_embeddings
    layer = hf.model.layers[0].self_attn
    assert bool((layer.sinks == gpt_oss.NO_SINK).all()) and not layer.q_proj.bias.any()
    # and back: the stand-ins are recognised, the same model comes back
    import_hf(dst, tmp_path / "back")
    back, _, _ = load_model(tmp_path / "back")
    assert not (back.cfg.attn.sinks or back.cfg.attn.bias)
    sd, sd_back = model.state_dict(), back.state_dict()
    assert set(sd) == set(sd_back) and all(torch.equal(sd[k], sd_back[k]) for k in sd)


class OldGptOssConfig:
    """A transformers GptOssConfig from before swiglu_alpha was configurable."""

    def __init__(self, swiglu_limit: float = 7.0, **kw):
        pass


@pytest.mark.parametrize(
    "kw, needle",
    [
        (
            {"pattern": "AM", "mamba": {"d_state": 16, "head_dim": 16, "chunk_size": 8}},
            "attention layers only",
        ),
        ({"ffn": "EDE"}, "MoE feed-forward in every layer: model.ffn='EDE' gives layers [1] mlp"),
        ({"attn": {"qk_norm": True}}, "no QK-norm"),
        ({"attn": {"use_rope": False}}, "use_rope=false"),
        ({"moe": {"swiglu_alpha": 1.5}}, "fixes swiglu_alpha at 1.702"),
    ],
)
def test_export_refuses_what_gpt_oss_cannot_compute(kw, needle, monkeypatch):
    if "swiglu_alpha" in kw.get("moe", {}):
        # the module `from transformers import` reads now (loading a model can swap sys.modules' one)
        monkeypatch.setattr(importlib.import_module("transformers"), "GptOssConfig", OldGptOssConfig)
    model = LM(model_config(NATIVE, **kw))
    with pytest.raises(AdambaError, match=re.escape(needle)) as e:
        lm_to_hf(model)
    assert "\n" not in str(e.value)


def test_a_refused_export_leaves_nothing(tiny_data, tmp_path):
    cfg = model_config(NATIVE, ffn="ED")
    save_checkpoint(tmp_path / "run", 0, LM(cfg), Config(model=cfg), tiny_data["tokenizer"])
    with pytest.raises(AdambaError, match="GPT-OSS has a MoE feed-forward in every layer"):
        export_hf(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
