"""GPT-OSS's attention features in adamba's Attention: biases, attention sinks, a sliding window on
some layers (attn.window_pattern) and YaRN RoPE, against transformers' GptOssAttention and
rotary embedding (same weights, tiny config built locally), and in every decoding path: the KV
cache token by token (SDPA and grouped-matmul paths), continuous batching of rows of different
lengths, and Matryoshka widths (the first heads' sinks)."""

import pytest
import torch

from adamba.errors import AdambaError
from adamba.model.batch_decode import BatchDecoder
from adamba.model.lm import LM
from adamba.nn.attention import Attention, single_query_pays, sink_sdpa
from tests.helpers import model_config

transformers = pytest.importorskip("transformers")

D, H, HK, HD, WINDOW, T = 32, 4, 2, 12, 5, 12  # head_dim 12: not d_model / n_head
YARN = {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False}
YARN_ORIG = 4096


def hf_config(rope=None, n_layer=2):
    from transformers.models.gpt_oss.configuration_gpt_oss import GptOssConfig

    rope = {**YARN, "original_max_position_embeddings": YARN_ORIG, "rope_theta": 150000.0, **(rope or {})}
    hc = GptOssConfig(
        hidden_size=D,
        num_attention_heads=H,
        num_key_value_heads=HK,
        head_dim=HD,
        num_hidden_layers=n_layer,
        layer_types=["sliding_attention", "full_attention"][:n_layer],
        sliding_window=WINDOW,
        rope_parameters=rope,
        max_position_embeddings=131072,
        intermediate_size=16,
        num_local_experts=4,
        num_experts_per_tok=2,
        vocab_size=64,
    )
    hc._attn_implementation = "eager"
    return hc


def ours_config(**attn):
    a = {
        "n_head": H,
        "n_kv_head": HK,
        "head_dim": HD,
        "qk_norm": False,
        "bias": True,
        "sinks": True,
        "window": WINDOW,
        "window_pattern": "SF",
        "rope_theta": 150000.0,
        "rope_scaling": "yarn",
        "yarn_factor": 32.0,
        "yarn_original_max": YARN_ORIG,
        **attn,
    }
    return model_config({"d_model": D, "n_layer": 2, "vocab_size": 64, "max_seq_len": 16}, attn=a)


def randomise(module, std=0.3):
    """Random values for every parameter (sinks and biases start at 0 in both)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)


def eager_mask(T, window):
    """transformers' additive mask: 0 where a query reads a key, -inf elsewhere."""
    q, k = torch.arange(T)[:, None], torch.arange(T)[None, :]
    ok = (k <= q) & ((k > q - window) if window else True)
    return torch.zeros(T, T).masked_fill(~ok, float("-inf"))[None, None]


@pytest.mark.parametrize("layer_idx", [0, 1])  # 0: sliding (window 5 < 12 tokens), 1: full
def test_equals_transformers_gpt_oss_attention(layer_idx):
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, GptOssRotaryEmbedding

    hc = hf_config()
    torch.manual_seed(0)
    ref = GptOssAttention(hc, layer_idx)
    randomise(ref)
    ours = Attention(ours_config(), layer_idx)
    assert ours.window == (WINDOW if layer_idx == 0 else 0)
    with torch.no_grad():
        ours.qkv_proj.weight.copy_(torch.cat([ref.q_proj.weight, ref.k_proj.weight, ref.v_proj.weight]))
        ours.qkv_proj.bias.copy_(torch.cat([ref.q_proj.bias, ref.k_proj.bias, ref.v_proj.bias]))
        ours.o_proj.load_state_dict(ref.o_proj.state_dict())
        ours.sinks.copy_(ref.sinks)
    x = torch.randn(2, T, D)
    pos = torch.arange(T)[None].expand(2, -1)
    cos_sin = GptOssRotaryEmbedding(hc)(x, pos)
    want, _ = ref(x, cos_sin, eager_mask(T, ref.sliding_window or 0))
    torch.testing.assert_close(ours(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rope", [{}, {"truncate": True, "attention_factor": 1.3, "factor": 4.0}])
def test_yarn_tables_equal_transformers(rope):
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRotaryEmbedding

    hc = hf_config(rope)
    extra = {}
    if rope:
        extra = {"yarn_truncate": True, "yarn_attention_factor": 1.3, "yarn_factor": 4.0}
    rot = Attention(ours_config(**extra), 0).rotary
    n = 40  # past the initial table (max_seq_len 16): the grown table too
    x = torch.randn(1, 1, n, HD)
    rot(x)
    cos, sin = GptOssRotaryEmbedding(hc)(x, torch.arange(n)[None])
    assert rot.scale != 1.0
    for mine, theirs in ((rot.cos[:n], cos[0]), (rot.sin[:n], sin[0])):
        torch.testing.assert_close(mine[:, : HD // 2], theirs, rtol=0, atol=0)
        torch.testing.assert_close(mine[:, HD // 2 :], theirs, rtol=0, atol=0)


def eager_sinks(q, k, v, sinks, window):
    """transformers' eager formula: a sink column joins the scores, softmax, the column dropped."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + eager_mask(q.shape[2], window).to(q.dtype)
    s = torch.cat([s, sinks.view(1, -1, 1, 1).expand(*s.shape[:3], 1)], -1)
    return s.softmax(-1)[..., :-1] @ v


@pytest.mark.parametrize("window", [0, 4])
def test_sink_sdpa_equals_the_eager_formula_with_gradients(window):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 10, 8, dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, 2, 10, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    sinks = torch.randn(4, dtype=torch.float64, requires_grad=True)
    i, j = torch.arange(10)[:, None], torch.arange(10)[None]
    mask = None if not window else (j <= i) & (j > i - window)
    got, want = sink_sdpa(q, k, v, sinks, mask), eager_sinks(q, k, v, sinks, window)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    g1 = torch.autograd.grad(got.square().sum(), (q, k, v, sinks))
    g2 = torch.autograd.grad(want.square().sum(), (q, k, v, sinks))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def gpt_oss_lm(dtype=torch.float64, **attn):
    torch.manual_seed(0)
    model = LM(ours_config(**attn))
    with torch.no_grad():
        for b in model.blocks:
            b.mixer.sinks.normal_(0, 1.0)
            b.mixer.qkv_proj.bias.normal_(0, 0.3)
            b.mixer.o_proj.bias.normal_(0, 0.3)
    return model.to(dtype).eval()


@pytest.mark.parametrize("dtype, batch", [(torch.float64, 1), (torch.float32, 16)])
def test_decoding_token_by_token_equals_the_full_forward(dtype, batch):
    """float64 batch 1: the SDPA decode path; float32 batch 16 (64 row x head pairs): the grouped
    single-query matmuls. Both with sinks, a window shorter than the sequence and YaRN."""
    model = gpt_oss_lm(dtype)
    assert single_query_pays(torch.empty(batch, H, 1, HD, dtype=dtype), torch.empty(batch, HK, 3, HD)) == (
        batch == 16
    )
    x = torch.randint(0, 64, (batch, 14), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full, _ = model(x)
        state = model.init_state(batch)
        got = [model(x[:, :4], state=state)[0]]
        for t in range(4, 14):
            got.append(model(x[:, t : t + 1], state=state)[0])
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(torch.cat(got, 1), full, rtol=tol, atol=tol)


def test_narrow_width_reads_the_first_heads_sinks():
    """Attention at width 1/2 equals an attention of the first 2 heads (1 KV head), its sinks
    and biases the first heads' (o_proj's bias stays whole)."""
    torch.manual_seed(0)
    wide = Attention(ours_config(), 0).double()
    randomise(wide)
    small = Attention(ours_config(n_head=2, n_kv_head=1), 0).double()
    q, kv = 2 * HD, HD
    with torch.no_grad():
        w, b = wide.qkv_proj.weight, wide.qkv_proj.bias
        rows = torch.cat([torch.arange(q), H * HD + torch.arange(kv), (H + HK) * HD + torch.arange(kv)])
        small.qkv_proj.weight.copy_(w[rows])
        small.qkv_proj.bias.copy_(b[rows])
        small.o_proj.weight.copy_(wide.o_proj.weight[:, :q])
        small.o_proj.bias.copy_(wide.o_proj.bias)
        small.sinks.copy_(wide.sinks[:2])
    x = torch.randn(2, T, D, dtype=torch.float64)
    torch.testing.assert_close(wide(x, width=0.5), small(x), rtol=1e-10, atol=1e-10)


def alone(model, prompt, n):
    state = model.init_state(1)
    lg = model(torch.tensor([prompt]), state=state)[0][:, -1]
    seen = []
    for _ in range(n):
        seen.append(lg[0])
        lg = model(lg.argmax(-1)[:, None], state=state)[0][:, -1]
    return seen


def test_batch_decode_rows_of_different_lengths_equal_solo_runs():
    model = gpt_oss_lm()
    g = torch.Generator().manual_seed(2)
    prompts = {i: torch.randint(0, 64, (n,), generator=g).tolist() for i, n in enumerate([3, 9, 6])}
    steps, joins = {0: 8, 1: 4, 2: 6}, {0: 0, 1: 2, 2: 3}
    want = {i: alone(model, prompts[i], steps[i]) for i in prompts}
    dec, got, nxt = BatchDecoder(model), {i: [] for i in prompts}, {}
    for t in range(12):
        for i, at in joins.items():
            if at == t:
                nxt[i] = dec.add(i, prompts[i])
        if not len(dec):
            continue
        for i in dec.ids:
            got[i].append(nxt[i])
        done = {i for i in dec.ids if len(got[i]) == steps[i]}
        if len(done) < len(dec):
            logits = dec.step(torch.stack([nxt[i].argmax() for i in dec.ids]))
            nxt.update({r: logits[j] for j, r in enumerate(dec.ids)})
        dec.remove(done)
    for i in prompts:
        torch.testing.assert_close(torch.stack(got[i]), torch.stack(want[i]), rtol=1e-9, atol=1e-9)


def test_defaults_keep_the_plain_attention():
    a = Attention(model_config({"d_model": 32, "n_layer": 1}), 0)
    assert a.sinks is None and a.qkv_proj.bias is None and a.o_proj.bias is None and a.rotary.scale == 1.0


@pytest.mark.parametrize(
    "attn, needle",
    [
        ({"window_pattern": "SX", "window": 4}, "model.attn.window_pattern='SX'"),
        ({"window_pattern": "SF"}, "model.attn.window=0"),
        ({"rope_scaling": "ntk"}, "model.attn.rope_scaling='ntk'"),
        ({"rope_scaling": "yarn", "yarn_factor": 0.0}, "model.attn.yarn_factor"),
    ],
)
def test_bad_settings_are_one_line_errors(attn, needle):
    with pytest.raises(AdambaError, match=needle.replace("(", r"\(")) as e:
        model_config({"d_model": 32, "n_layer": 2}, attn=attn)
    assert "\n" not in str(e.value)


def test_window_pattern_counts_attention_layers_only():
    cfg = model_config(
        {"d_model": 32, "n_layer": 4, "pattern": "AMAA", "mamba": {"d_state": 8, "head_dim": 16}},
        attn={"window": 3, "window_pattern": "SF"},
    )
    model = LM(cfg)
    windows = [b.mixer.window for b in model.blocks if b.kind == "A"]
    assert windows == [3, 0, 3]
