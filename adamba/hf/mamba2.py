"""Mamba2ForCausalLM <-> adamba models of Mamba2 layers without a feed-forward (pattern "M").

adamba's Mamba2 layer keeps transformers' parameter names and shapes (in_proj -> [z, xBC, dt],
conv1d, dt_bias, A_log, D, the gated norm, out_proj), so a layer's weights move as they are;
only the block around it is renamed (norm -> norm1, backbone.norm_f -> norm).
"""

from __future__ import annotations

import math

import torch

from adamba.config import MambaConfig, ModelConfig
from adamba.errors import AdambaError

MODEL_TYPES = ("mamba2",)
MIXER_KEYS = (
    "in_proj.weight",
    "conv1d.weight",
    "conv1d.bias",
    "dt_bias",
    "A_log",
    "D",
    "norm.weight",
    "out_proj.weight",
)


def _num(v) -> float:
    """A number of a config.json; transformers 5 writes infinity as {"__float__": "Infinity"}."""
    return float(v["__float__"] if isinstance(v, dict) else v)


def check_mamba(what: str, *, proj_bias: bool, conv_bias: bool, limit, act: str = "silu") -> None:
    """Refuse the Mamba2 settings adamba's layer does not compute (it has no projection biases,
    a conv bias, SiLU and no clamp on dt)."""
    if proj_bias or not conv_bias:
        raise AdambaError(
            f"{what}: projection biases / a conv without bias are not supported by adamba's Mamba2"
        )
    if act != "silu":
        raise AdambaError(f"{what}: Mamba2 activation {act!r} is not supported (adamba's Mamba2 uses silu)")
    if limit is not None and (_num(limit[0]) != 0.0 or not math.isinf(_num(limit[1]))):
        raise AdambaError(
            f"{what}: time_step_limit {list(limit)} is not supported (adamba's Mamba2 does not clamp dt)"
        )


def mamba_table(
    d_model: int,
    n_heads: int,
    head_dim: int,
    d_state: int,
    n_groups: int,
    d_conv: int,
    chunk: int,
    expand,
    ffn: str,
) -> MambaConfig:
    if n_heads * head_dim != int(expand * d_model):
        raise AdambaError(
            f"Mamba2 heads x head_dim = {n_heads * head_dim} must equal expand x hidden_size = {expand * d_model}"
        )
    return MambaConfig(
        d_state=d_state,
        d_conv=d_conv,
        expand=int(expand),
        head_dim=head_dim,
        n_groups=n_groups,
        chunk_size=chunk,
        ffn=ffn,
    )


def to_adamba(hf: dict, sd: dict[str, torch.Tensor]) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    check_mamba(
        "mamba2",
        proj_bias=hf.get("use_bias", False),
        conv_bias=hf.get("use_conv_bias", True),
        limit=hf.get("time_step_limit"),
        act=hf.get("hidden_act", "silu"),
    )
    if not hf.get("rms_norm", True):
        raise AdambaError(
            "mamba2 with rms_norm=false is not supported (adamba's Mamba2 has the gated RMSNorm)"
        )
    d = hf["hidden_size"]
    cfg = ModelConfig(
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_layer=hf["num_hidden_layers"],
        pattern="M",
        ffn="none",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
        mamba=mamba_table(
            d,
            hf["num_heads"],
            hf["head_dim"],
            hf["state_size"],
            hf["n_groups"],
            hf["conv_kernel"],
            hf["chunk_size"],
            hf["expand"],
            "none",
        ),
    ).validate()
    out = {"embed.weight": sd["backbone.embeddings.weight"], "norm.weight": sd["backbone.norm_f.weight"]}
    out["head.weight"] = out["embed.weight"] if cfg.tie_embeddings else sd["lm_head.weight"]
    for i in range(cfg.n_layer):
        p = f"backbone.layers.{i}."
        out[f"blocks.{i}.norm1.weight"] = sd[p + "norm.weight"]
        out.update({f"blocks.{i}.mixer.{k}": sd[p + "mixer." + k] for k in MIXER_KEYS})
    return cfg, out


def from_adamba(model) -> tuple[object, dict[str, torch.Tensor]]:
    cfg: ModelConfig = model.cfg
    if set(cfg.layer_types()) != {"M"} or set(cfg.layer_ffns()) != {"none"}:
        raise AdambaError("only models of Mamba2 layers without a feed-forward export to Mamba2ForCausalLM")
    from transformers import Mamba2Config

    mc, m0 = cfg.mamba, model.blocks[0].mixer
    hc = Mamba2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layer,
        num_heads=m0.n_heads,
        head_dim=mc.head_dim,
        state_size=mc.d_state,
        expand=mc.expand,
        n_groups=mc.n_groups,
        conv_kernel=mc.d_conv,
        chunk_size=mc.chunk_size,
        use_bias=False,
        use_conv_bias=True,
        layer_norm_epsilon=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
    )
    sd = {"backbone.embeddings.weight": model.embed.weight, "backbone.norm_f.weight": model.norm.weight}
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = model.head.weight
    for i, b in enumerate(model.blocks):
        p, msd = f"backbone.layers.{i}.", b.mixer.state_dict()
        sd[p + "norm.weight"] = b.norm1.weight
        sd.update({p + "mixer." + k: msd[k] for k in MIXER_KEYS})
    return hc, sd
