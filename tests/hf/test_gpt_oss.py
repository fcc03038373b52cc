"""GPT-OSS import: a tiny random GptOssForCausalLM (sliding + full layers with a window shorter
than the sequence, YaRN as GPT-OSS uses it, sinks and biases randomised) converted by
adamba.hf.gpt_oss.to_adamba gives the same logits and the same greedy tokens; MXFP4 expert weights
dequantise bit for bit as transformers does, in the layout the model multiplies with."""

import json

import pytest
import torch

from adamba.errors import AdambaError
from adamba.hf import gpt_oss
from adamba.hf.mxfp4 import dequantize
from adamba.model import decode
from adamba.model.lm import LM

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


def hf_model():
    from transformers import GptOssConfig, GptOssForCausalLM

    hc = GptOssConfig(
        vocab_size=64,
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
