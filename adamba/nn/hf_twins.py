"""The Hugging Face `transformers` modules our mixers mirror, built with our weights.

Tests use them as oracles and benchmarks as peers: adamba's Mamba2 and KDA layers use the same
parameter names and shapes as `Mamba2Mixer` and `KimiLinearDeltaAttention`, so one state dict
loads strictly into both. Each builder returns None when the installed transformers lacks the
module (Kimi Linear needs transformers >= 5.0); transformers itself is an optional extra.
"""

from __future__ import annotations

from torch import nn

from adamba.config import ModelConfig


def hf_mamba2_mixer(layer: nn.Module, cfg: ModelConfig) -> nn.Module | None:
    """transformers' Mamba2Mixer (pure-torch path on CPU) holding `layer`'s weights."""
    try:
        from transformers import Mamba2Config
        from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    except ImportError:
        return None
    hc = Mamba2Config(
        hidden_size=cfg.d_model,
        num_heads=layer.n_heads,
        head_dim=cfg.mamba.head_dim,
        state_size=cfg.mamba.d_state,
        expand=cfg.mamba.expand,
        n_groups=cfg.mamba.n_groups,
        conv_kernel=cfg.mamba.d_conv,
        chunk_size=cfg.mamba.chunk_size,
        use_bias=False,
        use_conv_bias=True,
        layer_norm_epsilon=cfg.norm_eps,
        num_hidden_layers=1,
        vocab_size=16,
    )
    hf = Mamba2Mixer(hc, layer_idx=0)
    hf.load_state_dict(layer.state_dict(), strict=True)
    return hf


def hf_kimi_delta_attention(layer: nn.Module, cfg: ModelConfig) -> nn.Module | None:
    """transformers' KimiLinearDeltaAttention (pure-torch path on CPU) holding `layer`'s weights."""
    try:
        from transformers.models.kimi_linear.configuration_kimi_linear import KimiLinearConfig
        from transformers.models.kimi_linear.modeling_kimi_linear import KimiLinearDeltaAttention
    except ImportError:
        return None
    hc = KimiLinearConfig(
        hidden_size=cfg.d_model,
        num_hidden_layers=1,
        layer_types=["linear_attention"],
        rms_norm_eps=cfg.norm_eps,
        linear_attn_config={
            "head_dim": layer.head_dim,
            "num_heads": layer.n_head,
            "short_conv_kernel_size": cfg.kda.conv,
        },
    )
    hf = KimiLinearDeltaAttention(hc, 0)
    hf.load_state_dict(layer.state_dict(), strict=True)
    return hf


def hf_llama(model: nn.Module, attn_implementation: str = "sdpa") -> nn.Module | None:
    """transformers' LlamaForCausalLM holding a dense adamba LM's weights. Exact only for the
    Llama-equivalent configuration (pattern "A", SwiGLU, no QK-norm, RoPE, untied head)."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    cfg: ModelConfig = model.cfg
    hc = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=int(round(cfg.mlp.ratio * cfg.d_model)),
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.attn.n_head,
        num_key_value_heads=cfg.attn.n_kv_head,
        head_dim=cfg.attn.head_dim,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.attn.rope_theta,
        max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=cfg.tie_embeddings,
        attn_implementation=attn_implementation,
    )
    hf = LlamaForCausalLM(hc)
    sd = {
        "model.embed_tokens.weight": model.embed.weight,
        "model.norm.weight": model.norm.weight,
        "lm_head.weight": model.head.weight,
    }
    for i, b in enumerate(model.blocks):
        p = f"model.layers.{i}."
        q, k, v = b.mixer.qkv_proj.weight.split([b.mixer.q_dim, b.mixer.kv_dim, b.mixer.kv_dim])
        sd.update(
            {
                p + "self_attn.q_proj.weight": q,
                p + "self_attn.k_proj.weight": k,
                p + "self_attn.v_proj.weight": v,
                p + "self_attn.o_proj.weight": b.mixer.o_proj.weight,
                p + "mlp.gate_proj.weight": b.mlp.w_gate.weight,
                p + "mlp.up_proj.weight": b.mlp.w_up.weight,
                p + "mlp.down_proj.weight": b.mlp.w_down.weight,
                p + "input_layernorm.weight": b.norm1.weight,
                p + "post_attention_layernorm.weight": b.norm2.weight,
            }
        )
    missing, unexpected = hf.load_state_dict({k: t.detach().clone() for k, t in sd.items()}, strict=False)
    if unexpected or any("rotary" not in m for m in missing):
        raise ValueError(f"weights do not map onto Llama: missing {missing}, unexpected {unexpected}")
    return hf
