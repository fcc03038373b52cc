"""Llama, Mistral and Qwen3 <-> adamba dense models (pattern "A", a gated or ReLU^2 MLP).

The three differ only in what adamba turns on with a flag: Qwen3 normalises q and k per head
(adamba's QK-norm), Mistral has one sliding window for every layer. Our fused qkv_proj is their
q, k, v stacked, and our RoPE uses their rotate-half layout, so no weight is permuted.

ReLU^2 (adamba's default MLP) has no non-gated twin in these architectures, but a gated MLP with
act = relu and gate = up computes it exactly: relu(u) * u = relu(u)^2. Export writes that (the
up projection twice), and import recognises it and gives back the ReLU^2 MLP.
"""

from __future__ import annotations

import torch

from adamba.config import AttnConfig, MLPConfig, ModelConfig
from adamba.errors import AdambaError

MODEL_TYPES = ("llama", "mistral", "qwen3")
MAX_SEQ = 8192  # adamba's max_seq_len for an import (the context evals use; RoPE tables grow anyway)


def rope_theta(hf: dict) -> float:
    """RoPE base of a config.json, refusing scaled RoPE (llama3, linear, dynamic, yarn)."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise AdambaError(
            f"rope type {kind!r} is not supported for {hf.get('model_type')} import (only plain RoPE)"
        )
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise AdambaError("partial rotary embeddings are not supported (rope partial_rotary_factor != 1)")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))


def gpt_oss_features(a: AttnConfig) -> list[str]:
    """The GPT-OSS attention settings a model uses (none of the exported architectures has them)."""
    named = {"bias": "attention biases", "sinks": "attention sinks", "rope_scaling": "YaRN RoPE"}
    out = [text for key, text in named.items() if getattr(a, key)]
    if a.window_pattern and len(set(a.window_pattern)) > 1:
        out.append("per-layer windows (model.attn.window_pattern)")
    return out


def _window(hf: dict) -> int:
    """One sliding window for every layer (0 = full attention); mixed layers are refused."""
    if hf["model_type"] == "mistral":
        return int(hf.get("sliding_window") or 0)
    if hf["model_type"] == "qwen3" and hf.get("use_sliding_window"):
        kinds = set(hf.get("layer_types") or ["sliding_attention"])
        if kinds != {"sliding_attention"}:
            raise AdambaError("Qwen3 with sliding and full attention layers mixed is not supported")
        return int(hf["sliding_window"])
    return 0


def _check_flags(hf: dict) -> None:
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise AdambaError(
                f"{hf['model_type']} with {key}=true is not supported (adamba's layers have no biases)"
            )


def to_adamba(hf: dict, sd: dict[str, torch.Tensor]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(adamba ModelConfig, state dict that loads strictly into LM(cfg)) from a config.json and
    the model's weights under transformers' names."""
    _check_flags(hf)
    d, n_layer = hf["hidden_size"], hf["num_hidden_layers"]
    n_head = hf["num_attention_heads"]
    act = hf.get("hidden_act", "silu")
    if act == "silu":
        mlp_act = "swiglu"
    elif act == "relu" and all(
        torch.equal(sd[f"model.layers.{i}.mlp.gate_proj.weight"], sd[f"model.layers.{i}.mlp.up_proj.weight"])
        for i in range(n_layer)
    ):
        mlp_act = "relu2"  # relu(u) * u: adamba's own export of a ReLU^2 MLP
    else:
        raise AdambaError(
            f"hidden_act={act!r} is not supported (silu, or relu with gate = up as adamba exports)"
        )
    cfg = ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layer=n_layer,
        pattern="A",
        ffn="mlp",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=min(int(hf.get("max_position_embeddings", 2048)), MAX_SEQ),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        attn=AttnConfig(
            n_head=n_head,
            n_kv_head=hf.get("num_key_value_heads") or n_head,
            head_dim=hf.get("head_dim") or d // n_head,
            rope_theta=rope_theta(hf),
            qk_norm=hf["model_type"] == "qwen3",
            window=_window(hf),
        ),
        mlp=MLPConfig(act=mlp_act, ratio=hf["intermediate_size"] / d),
    ).validate()
    out = {"embed.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.norm.weight"]}
    out["head.weight"] = sd["model.embed_tokens.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    for i in range(n_layer):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        attn = [sd[f"{p}self_attn.{n}_proj.weight"] for n in "qkv"]
        out[q + "mixer.qkv_proj.weight"] = torch.cat(attn, 0)
        out[q + "mixer.o_proj.weight"] = sd[p + "self_attn.o_proj.weight"]
        if cfg.attn.qk_norm:
            out[q + "mixer.q_norm_weight"] = sd[p + "self_attn.q_norm.weight"]
            out[q + "mixer.k_norm_weight"] = sd[p + "self_attn.k_norm.weight"]
        out[q + "norm1.weight"] = sd[p + "input_layernorm.weight"]
        out[q + "norm2.weight"] = sd[p + "post_attention_layernorm.weight"]
        out[q + "mlp.w_up.weight"] = sd[p + "mlp.up_proj.weight"]
        if mlp_act == "swiglu":
            out[q + "mlp.w_gate.weight"] = sd[p + "mlp.gate_proj.weight"]
        out[q + "mlp.w_down.weight"] = sd[p + "mlp.down_proj.weight"]
    return cfg, out


def from_adamba(model) -> tuple[object, dict[str, torch.Tensor]]:
    """(transformers config, state dict under its names) for a dense adamba LM: Qwen3 when it
    has QK-norm, else Mistral when it has a sliding window, else Llama."""
    cfg: ModelConfig = model.cfg
    a = cfg.attn
    if set(cfg.layer_types()) != {"A"} or set(cfg.layer_ffns()) != {"mlp"}:
        raise AdambaError(
            "only models of attention layers with an MLP each export to Llama / Qwen3 / Mistral"
        )
    if not a.use_rope:
        raise AdambaError("model.attn.use_rope=false has no Llama-family twin (they all use RoPE)")
    bad = gpt_oss_features(a)
    if bad:
        raise AdambaError(
            f"Llama / Mistral / Qwen3 have no {', '.join(bad)} (an all-MoE attention model with them exports as GPT-OSS)"
        )
    from transformers import LlamaConfig, MistralConfig, Qwen3Config

    win = a.window_at(0)  # one window for every layer (a mixed window_pattern was refused)

    common = dict(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=model.blocks[0].mlp.hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=a.n_head,
        num_key_value_heads=a.n_kv_head,
        head_dim=a.head_dim,
        hidden_act="silu" if cfg.mlp.act == "swiglu" else "relu",
        rms_norm_eps=cfg.norm_eps,
        max_position_embeddings=max(cfg.max_seq_len, win),
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta},
    )
    if a.qk_norm:
        window = {"use_sliding_window": True, "sliding_window": win, "max_window_layers": 0} if win else {}
        hc = Qwen3Config(**common, **window)
        if win:
            hc.layer_types = ["sliding_attention"] * cfg.n_layer
    elif win:
        hc = MistralConfig(**common, sliding_window=win)
    else:
        hc = LlamaConfig(**common)
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.norm.weight": model.norm.weight}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = model.head.weight
    for i, b in enumerate(model.blocks):
        p, m = f"model.layers.{i}.", b.mixer
        q, k, v = m.qkv_proj.weight.split([m.q_dim, m.kv_dim, m.kv_dim])
        sd.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k})
        sd.update({p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": m.o_proj.weight})
        if a.qk_norm:
            sd[p + "self_attn.q_norm.weight"] = m.q_norm_weight
            sd[p + "self_attn.k_norm.weight"] = m.k_norm_weight
        sd[p + "input_layernorm.weight"] = b.norm1.weight
        sd[p + "post_attention_layernorm.weight"] = b.norm2.weight
        gate = b.mlp.w_gate.weight if cfg.mlp.act == "swiglu" else b.mlp.w_up.weight
        sd.update({p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": b.mlp.w_up.weight})
        sd[p + "mlp.down_proj.weight"] = b.mlp.w_down.weight
    return hc, sd
