import pytest
import torch

from adamba.config import ModelConfig
from adamba.model.lm import LM


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=97, d_model=64, n_layer=2, n_head=4, n_kv_head=2, max_seq_len=64)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize(
    "kw", [{}, {"window": 5}, {"mlp_act": "swiglu", "tie_embeddings": True}, {"n_kv_head": 4}]
)
def test_prefill_then_decode_equals_full_forward(kw):
    torch.manual_seed(0)
    model = LM(tiny(**kw)).eval()
    x = torch.randint(0, 97, (2, 23))
    full, _ = model(x)
    state = model.init_state(2)
    outs = [model(x[:, :10], state=state)[0]]
    outs += [model(x[:, t : t + 1], state=state)[0] for t in range(10, 23)]
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=1e-5)


def test_causal_and_ignore_index():
    torch.manual_seed(0)
    model = LM(tiny())
    x = torch.randint(0, 97, (1, 16))
    a, _ = model(x)
    x2 = x.clone()
    x2[0, 10:] = 0
    b, _ = model(x2)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    y = torch.randint(0, 97, (1, 16))
    y_masked = y.clone()
    y_masked[0, :8] = -100
    _, loss_masked = model(x, y_masked)
    logits, _ = model(x)
    ref = torch.nn.functional.cross_entropy(logits[0, 8:], y[0, 8:])
    torch.testing.assert_close(loss_masked, ref)


def test_tied_embeddings_share_storage():
    model = LM(tiny(tie_embeddings=True))
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()


def test_matches_transformers_llama():
    """Oracle: with SwiGLU, no QK-norm, untied head, our dense LM is exactly a Llama."""
    tr = pytest.importorskip("transformers")
    cfg = tiny(mlp_act="swiglu", qk_norm=False, mlp_ratio=2.5, norm_eps=1e-6)
    torch.manual_seed(0)
    ours = LM(cfg).eval()
    hf_cfg = tr.LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=int(round(cfg.mlp_ratio * cfg.d_model)),
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        attn_implementation="eager",
    )
    hf = tr.LlamaForCausalLM(hf_cfg).eval()
    sd = {
        "model.embed_tokens.weight": ours.embed.weight,
        "model.norm.weight": ours.norm.weight,
        "lm_head.weight": ours.head.weight,
    }
    for i, b in enumerate(ours.blocks):
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
    missing, unexpected = hf.load_state_dict({k: v.detach().clone() for k, v in sd.items()}, strict=False)
    assert not unexpected and all("rotary" in m for m in missing)
    x = torch.randint(0, cfg.vocab_size, (2, 20))
    torch.testing.assert_close(ours(x)[0], hf(input_ids=x).logits, atol=1e-5, rtol=1e-4)
