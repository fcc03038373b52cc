"""GPT-OSS <-> adamba: attention layers (GQA with biases and attention sinks, a sliding window on
the layers layer_types names sliding, YaRN RoPE, no QK-norm) each followed by a GPT-OSS MoE.

adamba's MoE (adamba/nn/moe.py) keeps GPT-OSS's expert layout (gate_up_proj [E, d, 2H] with gate
and up interleaved, down_proj [E, H, d], biases, a router with bias), so the experts map one to
one; our fused qkv_proj is q, k, v stacked. The released checkpoints store the expert matrices in
MXFP4 (`..._blocks` / `..._scales`, adamba/hf/mxfp4.py): they are dequantised here to the
checkpoint's dtype and transposed to the [E, in, out] layout the model multiplies with.

Export (`from_adamba`) takes models of attention layers with a MoE in every layer. GPT-OSS always
has attention biases and sinks: a model without biases gets zero ones, a model without sinks gets
sinks of NO_SINK (-1000): exp(-1000 - max logit) is exactly 0 in float32 (and in bf16 / fp16),
so the sink adds nothing to the softmax denominator. Import gives both back as absent when it
finds exactly those values, so adamba -> GPT-OSS -> adamba returns the same model.
tests/hf/test_gpt_oss.py checks the logits and greedy generation of a tiny random GptOssForCausalLM,
and both directions of the export.
"""

from __future__ import annotations

import inspect

import torch

from adamba.config import AttnConfig, ModelConfig, MoEConfig
from adamba.errors import AdambaError
from adamba.hf.mxfp4 import dequantize

MODEL_TYPES = ("gpt_oss",)
MAX_SEQ = 4096  # adamba's initial RoPE table length (the tables grow on demand)
LETTERS = {"sliding_attention": "S", "full_attention": "F"}
NAMES = {letter: name for name, letter in LETTERS.items()}
NO_SINK = -1000.0  # the sink of an exported model without sinks: exp(NO_SINK - max logit) == 0


def _period(s: str) -> str:
    """The shortest prefix whose repetition gives `s` ("SFSFSF" -> "SF")."""
    for n in range(1, len(s) + 1):
        if all(s[i] == s[i % n] for i in range(len(s))):
            return s[:n]
    return s


def _windows(hf: dict) -> dict:
    """window + window_pattern from layer_types and sliding_window."""
    n = hf["num_hidden_layers"]
    types = hf.get("layer_types") or [
        "sliding_attention" if (i + 1) % 2 else "full_attention" for i in range(n)
    ]
    bad = sorted(set(types) - set(LETTERS))
    if bad:
        raise AdambaError(f"GPT-OSS layer_types {bad} are not supported (sliding_attention, full_attention)")
    if len(types) != n:
        raise AdambaError(f"GPT-OSS layer_types has {len(types)} entries for num_hidden_layers={n}")
    letters = "".join(LETTERS[t] for t in types)
    if "S" not in letters:
        return {"window": 0, "window_pattern": ""}
    window = hf.get("sliding_window")
    if not window or window < 1:
        raise AdambaError(f"GPT-OSS sliding_attention layers with sliding_window={window!r} (need >= 1)")
    pattern = _period(letters)
    return {"window": int(window), "window_pattern": "" if pattern == "S" else pattern}


def _rope(hf: dict) -> dict:
    """rope_theta and YaRN settings from rope_parameters (transformers 5) or rope_scaling (the
    released config.json, with rope_theta beside it)."""
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 150000.0)))
    kind = rope.get("rope_type", rope.get("type", "default"))
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise AdambaError(
            "GPT-OSS with partial_rotary_factor != 1 is not supported (rope partial_rotary_factor)"
        )
    if kind == "default":
        return {"rope_theta": theta}
    if kind != "yarn":
        raise AdambaError(f"GPT-OSS rope_type {kind!r} is not supported (default or yarn)")
    for key in ("mscale", "mscale_all_dim"):
        if rope.get(key):
            raise AdambaError(f"GPT-OSS yarn with rope {key}={rope[key]} is not supported")
    factor = rope.get("factor")
    orig = rope.get("original_max_position_embeddings") or hf.get("max_position_embeddings")
    if factor is None:
        factor = hf["max_position_embeddings"] / orig
    return {
        "rope_theta": theta,
        "rope_scaling": "yarn",
        "yarn_factor": float(factor),
        "yarn_original_max": int(orig),
        "yarn_beta_fast": float(rope.get("beta_fast") or 32.0),
        "yarn_beta_slow": float(rope.get("beta_slow") or 1.0),
        "yarn_truncate": bool(rope.get("truncate", True)),
        "yarn_attention_factor": float(rope.get("attention_factor") or 0.0),
    }


def config(hf: dict) -> ModelConfig:
    """The adamba ModelConfig of a GptOssConfig dict (config.json or config.to_dict())."""
    quant = (hf.get("quantization_config") or {}).get("quant_method")
    if quant not in (None, "mxfp4"):
        raise AdambaError(
            f"GPT-OSS quantization_config quant_method={quant!r} is not supported (mxfp4 or none)"
        )
    d, n_head = hf["hidden_size"], hf["num_attention_heads"]
    return ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layer=hf["num_hidden_layers"],
        pattern="A",
        ffn="moe",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=min(int(hf.get("max_position_embeddings", MAX_SEQ)), MAX_SEQ),
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        init_std=float(hf.get("initializer_range", 0.02)),
        attn=AttnConfig(
            n_head=n_head,
            n_kv_head=hf.get("num_key_value_heads") or n_head,
            head_dim=hf.get("head_dim") or d // n_head,
            qk_norm=False,
            bias=bool(hf.get("attention_bias", True)),
            sinks=True,
            **_windows(hf),
            **_rope(hf),
        ),
        moe=MoEConfig(
            n_experts=hf["num_local_experts"],
            top_k=hf["num_experts_per_tok"],
            ratio=hf["intermediate_size"] / d,  # round(ratio * d) is intermediate_size exactly
            aux_weight=float(hf.get("router_aux_loss_coef", 0.001)),
            swiglu_alpha=float(hf.get("swiglu_alpha", 1.702)),
            swiglu_limit=float(hf.get("swiglu_limit", 7.0)),
        ),
    ).validate()


def _expert(sd: dict[str, torch.Tensor], name: str, dtype: torch.dtype) -> torch.Tensor:
    """An expert matrix in the model's [E, in, out] layout: the plain tensor when the state dict
    has it, else its MXFP4 blocks/scales dequantised (stored [E, out, in], so transposed)."""
    if name in sd:
        return sd[name]
    if f"{name}_blocks" not in sd or f"{name}_scales" not in sd:
        raise AdambaError(f"GPT-OSS weights lack {name} (plain, or MXFP4 {name}_blocks + {name}_scales)")
    return dequantize(sd[f"{name}_blocks"], sd[f"{name}_scales"], dtype).transpose(1, 2).contiguous()


def to_adamba(hf: dict, sd: dict[str, torch.Tensor]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(adamba ModelConfig, state dict that loads strictly into LM(cfg)) from a GptOssConfig dict
    and the model's weights under transformers' names (plain or MXFP4 experts)."""
    cfg = config(hf)
    try:
        embed = sd["model.embed_tokens.weight"]
        out = {"embed.weight": embed, "norm.weight": sd["model.norm.weight"]}
        out["head.weight"] = embed if cfg.tie_embeddings else sd["lm_head.weight"]
        for i in range(cfg.n_layer):
            p, q = f"model.layers.{i}.", f"blocks.{i}."
            a = p + "self_attn."
            out[q + "mixer.qkv_proj.weight"] = torch.cat([sd[f"{a}{n}_proj.weight"] for n in "qkv"], 0)
            out[q + "mixer.o_proj.weight"] = sd[a + "o_proj.weight"]
            if cfg.attn.bias:
                out[q + "mixer.qkv_proj.bias"] = torch.cat([sd[f"{a}{n}_proj.bias"] for n in "qkv"], 0)
                out[q + "mixer.o_proj.bias"] = sd[a + "o_proj.bias"]
            out[q + "mixer.sinks"] = sd[a + "sinks"]
            out[q + "norm1.weight"] = sd[p + "input_layernorm.weight"]
            out[q + "norm2.weight"] = sd[p + "post_attention_layernorm.weight"]
            m = p + "mlp."
            out[q + "mlp.router.weight"] = sd[m + "router.weight"]
            out[q + "mlp.router.bias"] = sd[m + "router.bias"]
            for name in ("gate_up_proj", "down_proj"):
                out[f"{q}mlp.{name}"] = _expert(sd, f"{m}experts.{name}", embed.dtype)
                out[f"{q}mlp.{name}_bias"] = sd[f"{m}experts.{name}_bias"]
    except KeyError as e:
        raise AdambaError(f"GPT-OSS weights lack {e.args[0]} (not a GptOssForCausalLM state dict?)") from None
    _drop_exported_stand_ins(cfg, out)
    return cfg, out


def _drop_exported_stand_ins(cfg: ModelConfig, out: dict[str, torch.Tensor]) -> None:
    """What `from_adamba` writes for a model without sinks (every sink NO_SINK) or without
    attention biases (every one 0) comes back as absent: the same function, and adamba ->
    GPT-OSS -> adamba gives back the model it started from."""
    blocks = [f"blocks.{i}.mixer." for i in range(cfg.n_layer)]
    if all(bool((out[b + "sinks"] == NO_SINK).all()) for b in blocks):
        cfg.attn.sinks = False
        for b in blocks:
            del out[b + "sinks"]
    biases = [b + n for b in blocks for n in ("qkv_proj.bias", "o_proj.bias")]
    if cfg.attn.bias and all(not out[k].any() for k in biases):
        cfg.attn.bias = False
        for k in biases:
            del out[k]


def _refuse(cfg: ModelConfig) -> None:
    """One line naming what GPT-OSS cannot compute of an adamba model."""
    kinds, ffns, a = cfg.layer_types(), cfg.layer_ffns(), cfg.attn
    other = sorted(set(kinds) - {"A"})
    if other:
        raise AdambaError(
            f"GPT-OSS has attention layers only: model.pattern={cfg.pattern!r} has {', '.join(other)} layers"
        )
    dense = sorted(set(ffns) - {"moe"})
    if dense:
        where = [i for i, f in enumerate(ffns) if f != "moe"]
        raise AdambaError(
            f"GPT-OSS has a MoE feed-forward in every layer: model.ffn={cfg.ffn!r} gives layers {where} "
            f"{' / '.join(dense)} (a model with MLPs exports to Llama / Mistral / Qwen3)"
        )
    if a.qk_norm:
        raise AdambaError("GPT-OSS has no QK-norm (model.attn.qk_norm=true)")
    if not a.use_rope:
        raise AdambaError("GPT-OSS always uses RoPE (model.attn.use_rope=false)")
    from transformers import GptOssConfig

    known = set(getattr(GptOssConfig, "__dataclass_fields__", {})) | set(
        inspect.signature(GptOssConfig.__init__).parameters
    )
    for key, value, default in (
        ("swiglu_alpha", cfg.moe.swiglu_alpha, 1.702),
        ("swiglu_limit", cfg.moe.swiglu_limit, 7.0),
    ):
        if value != default and key not in known:
            raise AdambaError(
                f"this transformers' GPT-OSS fixes {key} at {default}: model.moe.{key}={value} needs a newer transformers"
            )


def _rope_parameters(a: AttnConfig) -> dict:
    if a.rope_scaling != "yarn":
        return {"rope_type": "default", "rope_theta": float(a.rope_theta)}
    rope = {
        "rope_type": "yarn",
        "rope_theta": float(a.rope_theta),
        "factor": float(a.yarn_factor),
        "original_max_position_embeddings": int(a.yarn_original_max),
        "beta_fast": float(a.yarn_beta_fast),
        "beta_slow": float(a.yarn_beta_slow),
        "truncate": bool(a.yarn_truncate),
    }
    if a.yarn_attention_factor:  # 0: transformers' own default, 0.1 ln(factor) + 1, as adamba's
        rope["attention_factor"] = float(a.yarn_attention_factor)
    return rope


def from_adamba(model) -> tuple[object, dict[str, torch.Tensor]]:
    """(GptOssConfig, state dict under transformers' names) of an adamba LM of attention layers
    with a MoE in every layer and no QK-norm. Attention biases and sinks the model lacks are
    written as zeros and NO_SINK (see the module doc); a model without any sliding layer still
    gets a sliding_window (transformers builds the sliding mask regardless): its context length,
    where a window changes nothing."""
    cfg: ModelConfig = model.cfg
    _refuse(cfg)
    from transformers import GptOssConfig

    a, m0 = cfg.attn, model.blocks[0].mlp
    letters = ["S" if a.window_at(i) else "F" for i in range(cfg.n_layer)]
    rope = _rope_parameters(a)
    if rope["rope_type"] == "yarn":  # the context YaRN extends to (transformers warns otherwise)
        max_pos = max(1, round(a.yarn_factor * a.yarn_original_max))
    else:
        max_pos = max(cfg.max_seq_len, a.window)
    hc = GptOssConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=m0.hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=a.n_head,
        num_key_value_heads=a.n_kv_head,
        head_dim=a.head_dim,
        layer_types=[NAMES[c] for c in letters],
        sliding_window=int(a.window or max_pos),
        num_local_experts=m0.n_experts,
        num_experts_per_tok=m0.top_k,
        max_position_embeddings=int(max_pos),
        rope_parameters=rope,
        rms_norm_eps=float(cfg.norm_eps),
        initializer_range=float(cfg.init_std),
        tie_word_embeddings=cfg.tie_embeddings,
        attention_bias=True,
        router_aux_loss_coef=float(cfg.moe.aux_weight),
        swiglu_alpha=float(m0.alpha),
        swiglu_limit=float(m0.limit),
    )
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = model.head.weight
    for i, b in enumerate(model.blocks):
        p, m, e = f"model.layers.{i}.", b.mixer, b.mlp
        at = p + "self_attn."
        w = m.qkv_proj.weight
        for n, t in zip("qkv", w.split([m.q_dim, m.kv_dim, m.kv_dim])):
            sd[f"{at}{n}_proj.weight"] = t
        sd[at + "o_proj.weight"] = m.o_proj.weight
        if a.bias:
            for n, t in zip("qkv", m.qkv_proj.bias.split([m.q_dim, m.kv_dim, m.kv_dim])):
                sd[f"{at}{n}_proj.bias"] = t
            sd[at + "o_proj.bias"] = m.o_proj.bias
        else:
            for n, size in zip("qkvo", (m.q_dim, m.kv_dim, m.kv_dim, cfg.d_model)):
                sd[f"{at}{n}_proj.bias"] = w.new_zeros(size)
        sd[at + "sinks"] = m.sinks if m.sinks is not None else w.new_full((a.n_head,), NO_SINK)
        sd[p + "input_layernorm.weight"] = b.norm1.weight
        sd[p + "post_attention_layernorm.weight"] = b.norm2.weight
        sd[p + "mlp.router.weight"] = e.router.weight
        sd[p + "mlp.router.bias"] = e.router.bias
        for name in ("gate_up_proj", "down_proj"):
            sd[f"{p}mlp.experts.{name}"] = getattr(e, name)
            sd[f"{p}mlp.experts.{name}_bias"] = getattr(e, name + "_bias")
    return hc, sd
