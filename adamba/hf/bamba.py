"""Bamba <-> adamba attention + Mamba2 hybrids.

Bamba's decoder layer is adamba's block: norm -> attention or Mamba2 -> residual, norm -> gated
MLP -> residual, with Mamba2 layers named as adamba's. It fits hybrids whose attention has RoPE
over the whole head (Bamba's config must say partial_rotary_factor = 1.0, its default is 0.5)
and no QK-norm, and whose MLP is SwiGLU (Bamba's `hidden_act` is also the Mamba2 activation, so
ReLU^2 through a relu gate would change the Mamba layers). A Mamba2 layer without a feed-forward
gets a zero MLP: it adds exactly nothing. What does not fit is refused by naming it; no other
transformers hybrid fits better (NemotronH's attention has no RoPE, GraniteMoeHybrid's neither
QK-norm, and none pairs Mamba2 with QK-normed attention).
"""

from __future__ import annotations

import torch

from adamba.config import AttnConfig, MLPConfig, ModelConfig
from adamba.errors import AdambaError
from adamba.hf.llama import gpt_oss_features, rope_theta
from adamba.hf.mamba2 import MIXER_KEYS, check_mamba, mamba_table

MODEL_TYPES = ("bamba",)


def to_adamba(hf: dict, sd: dict[str, torch.Tensor]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    check_mamba(
        "bamba",
        proj_bias=hf.get("mamba_proj_bias", False),
        conv_bias=hf.get("mamba_conv_bias", True),
        limit=hf.get("time_step_limit"),
        act=hf.get("hidden_act", "silu"),
    )
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise AdambaError(f"bamba with {key}=true is not supported (adamba's layers have no biases)")
    d, n = hf["hidden_size"], hf["num_hidden_layers"]
    attn_at = set(hf.get("attn_layer_indices") or [])
    n_head = hf["num_attention_heads"]
    cfg = ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layer=n,
        pattern="".join("A" if i in attn_at else "M" for i in range(n)),
        ffn="mlp",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=min(int(hf.get("max_position_embeddings", 2048)), 8192),
        norm_eps=float(hf.get("rms_norm_eps", 1e-5)),
        attn=AttnConfig(
            n_head=n_head,
            n_kv_head=hf.get("num_key_value_heads") or n_head,
            head_dim=d // n_head,
            rope_theta=rope_theta(hf),
            qk_norm=False,
        ),
        mlp=MLPConfig(act="swiglu", ratio=hf["intermediate_size"] / d),
        mamba=mamba_table(
            d,
            hf["mamba_n_heads"],
            hf["mamba_d_head"],
            hf["mamba_d_state"],
            hf["mamba_n_groups"],
            hf["mamba_d_conv"],
            hf["mamba_chunk_size"],
            hf["mamba_expand"],
            "mlp",
        ),
    ).validate()
    out = {"embed.weight": sd["model.embed_tokens.weight"], "norm.weight": sd["model.final_layernorm.weight"]}
    out["head.weight"] = out["embed.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    for i in range(n):
        p, q = f"model.layers.{i}.", f"blocks.{i}."
        out[q + "norm1.weight"] = sd[p + "input_layernorm.weight"]
        out[q + "norm2.weight"] = sd[p + "pre_ff_layernorm.weight"]
        if i in attn_at:
            out[q + "mixer.qkv_proj.weight"] = torch.cat([sd[f"{p}self_attn.{x}_proj.weight"] for x in "qkv"])
            out[q + "mixer.o_proj.weight"] = sd[p + "self_attn.o_proj.weight"]
        else:
            out.update({q + "mixer." + k: sd[p + "mamba." + k] for k in MIXER_KEYS})
        for ours, theirs in (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj")):
            out[f"{q}mlp.{ours}.weight"] = sd[f"{p}feed_forward.{theirs}.weight"]
    return cfg, out


def misfits(cfg: ModelConfig) -> list[str]:
    """What of this hybrid Bamba cannot compute (empty: it fits)."""
    kinds, a, out = set(cfg.layer_types()), cfg.attn, []
    if kinds - {"A", "M"}:
        out.append("KDA layers")
    if "A" in kinds:
        if a.qk_norm:
            out.append("QK-norm (model.attn.qk_norm=true)")
        if not a.use_rope:
            out.append("attention without RoPE")
        if a.window and "S" in (a.window_pattern or "S"):
            out.append("a sliding window")
        out += gpt_oss_features(a)
        if a.head_dim * a.n_head != cfg.d_model:
            out.append("head_dim x n_head != d_model")
    if "mlp" in cfg.layer_ffns() and cfg.mlp.act != "swiglu":
        out.append(f"a {cfg.mlp.act} MLP (Bamba's MLP activation is also its Mamba2 activation: swiglu only)")
    return out


def from_adamba(model) -> tuple[object, dict[str, torch.Tensor]]:
    cfg: ModelConfig = model.cfg
    bad = misfits(cfg)
    if bad:
        raise AdambaError(
            "no transformers architecture computes this hybrid; the closest, Bamba (attention + Mamba2, an MLP "
            f"per layer), lacks: {'; '.join(bad)}"
        )
    from transformers import BambaConfig

    kinds, ffns, a, mc = cfg.layer_types(), cfg.layer_ffns(), cfg.attn, cfg.mamba
    mlps = [b.mlp for b in model.blocks if b.mlp is not None]
    hidden = mlps[0].hidden if mlps else 1
    hc = BambaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=a.n_head,
        num_key_value_heads=a.n_kv_head,
        hidden_act="silu",
        rms_norm_eps=cfg.norm_eps,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings,
        attn_layer_indices=[i for i, k in enumerate(kinds) if k == "A"],
        mamba_n_heads=cfg.mamba.expand * cfg.d_model // mc.head_dim,
        mamba_d_head=mc.head_dim,
        mamba_n_groups=mc.n_groups,
        mamba_d_state=mc.d_state,
        mamba_d_conv=mc.d_conv,
        mamba_expand=mc.expand,
        mamba_chunk_size=mc.chunk_size,
        mamba_conv_bias=True,
        mamba_proj_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": a.rope_theta, "partial_rotary_factor": 1.0},
    )
    sd = {"model.embed_tokens.weight": model.embed.weight, "model.final_layernorm.weight": model.norm.weight}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = model.head.weight
    for i, (b, ffn) in enumerate(zip(model.blocks, ffns)):
        p, m = f"model.layers.{i}.", b.mixer
        sd[p + "input_layernorm.weight"] = b.norm1.weight
        if b.kind == "A":
            q, k, v = m.qkv_proj.weight.split([m.q_dim, m.kv_dim, m.kv_dim])
            sd.update({p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k})
            sd.update({p + "self_attn.v_proj.weight": v, p + "self_attn.o_proj.weight": m.o_proj.weight})
        else:
            msd = m.state_dict()
            sd.update({p + "mamba." + k: msd[k] for k in MIXER_KEYS})
        if ffn == "mlp":
            sd[p + "pre_ff_layernorm.weight"] = b.norm2.weight
            for ours, theirs in (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj")):
                sd[f"{p}feed_forward.{theirs}.weight"] = getattr(b.mlp, ours).weight
        else:  # no feed-forward: a zero MLP adds nothing
            sd[p + "pre_ff_layernorm.weight"] = torch.ones(cfg.d_model)
            for theirs, shape in (("gate_proj", (hidden, cfg.d_model)), ("up_proj", (hidden, cfg.d_model))):
                sd[f"{p}feed_forward.{theirs}.weight"] = torch.zeros(shape)
            sd[f"{p}feed_forward.down_proj.weight"] = torch.zeros(cfg.d_model, hidden)
    return hc, sd
