"""Hugging Face import / export against transformers itself: tiny random models built locally
(no download), saved with save_pretrained, imported, and compared logit by logit (1e-4) and by
greedy generation (identical tokens); adamba models exported, loaded back with
AutoModelForCausalLM and AutoTokenizer, compared the same way; round trips give back the weights."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from adamba.checkpoint import load_model, save_checkpoint  # noqa: E402
from adamba.config import Config  # noqa: E402
from adamba.errors import AdambaError  # noqa: E402
from adamba.hf.convert import import_hf  # noqa: E402
from adamba.model import decode  # noqa: E402
from adamba.model.lm import LM  # noqa: E402
from tests.helpers import adamba, assert_clean_error, model_config  # noqa: E402

VOCAB = 300
MAMBA = {"d_state": 16, "head_dim": 16, "chunk_size": 8, "n_groups": 1}


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """A foreign byte-level BPE (specials <s>, </s> at ids 0, 1) saved the transformers way."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.helpers import stdlib_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 20,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(stdlib_texts()[:2], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    d = tmp_path_factory.mktemp("hftok")
    fast.save_pretrained(d)
    return d


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter drawn afresh (norm gains around 1), so a swapped or dropped tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name or name.endswith(("layernorm.weight", "norm_f.weight")):
                p.copy_(1 + 0.2 * noise)
            elif name.endswith(("A_log", "dt_bias", "D")):
                p.copy_(0.5 * noise.abs() + 0.1)
            else:
                p.copy_(0.15 * noise)
    return model.eval()


def save_hf(model, tok_dir, d):
    model.save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (d / f).write_bytes((tok_dir / f).read_bytes())
    return d


def compare(hf, ours, seq: int = 24, n_new: int = 8) -> float:
    """Max |logit diff| on random tokens; greedy continuations identical."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, ours.cfg.vocab_size, (2, seq), generator=g)
    with torch.no_grad():
        diff = float((hf(x).logits - ours(x)[0]).abs().max())
    want = hf.generate(x[:1], max_new_tokens=n_new, do_sample=False, min_new_tokens=n_new)[0, seq:]
    got = torch.cat(list(decode.generate(ours, x[:1], n_new, temperature=0)))
    assert got.tolist() == want.tolist()
    return diff


HF_CASES = {
    "llama": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=120,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
    ),
    "qwen3-tied": lambda: transformers.Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=24,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    ),
    "mistral-window": lambda: transformers.MistralConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        sliding_window=7,
        max_position_embeddings=64,
    ),
    "mamba2": lambda: transformers.Mamba2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        num_heads=4,
        head_dim=16,
        state_size=16,
        expand=2,
        n_groups=1,
        chunk_size=8,
        num_hidden_layers=2,
        conv_kernel=4,
    ),
    "bamba": lambda: transformers.BambaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        attn_layer_indices=[1],
        mamba_n_heads=4,
        mamba_d_head=16,
        mamba_d_state=16,
        mamba_n_groups=1,
        mamba_chunk_size=8,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 1.0},
    ),
    "gpt_oss": lambda: transformers.GptOssConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        sliding_window=6,
        num_local_experts=4,
        num_experts_per_tok=2,
        layer_types=["sliding_attention", "full_attention"],
        max_position_embeddings=4096,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 150000.0,
            "factor": 32.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 4096,
        },
    ),
}


@pytest.mark.parametrize("case", list(HF_CASES))
def test_import_matches_transformers(case, hf_tokenizer, tmp_path):
    hc = HF_CASES[case]()
    hc._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = randomised(transformers.AutoModelForCausalLM.from_config(hc))
    src = save_hf(hf, hf_tokenizer, tmp_path / "src")
    if case == "llama":  # the command line, as a user runs it; sample works, chat says why not
        res = adamba("import", "hf", str(src), "--out", str(tmp_path / "run"))
        assert res.returncode == 0 and "imported llama" in res.stdout, res.stderr
        res = adamba("sample", "--ckpt", str(tmp_path / "run"), "--prompt", "def", "--max-new-tokens", "5")
        assert res.returncode == 0, res.stderr
        res = adamba("chat", "--ckpt", str(tmp_path / "run"), "--max-new-tokens", "8")
        assert_clean_error(res, "no adamba chat tokens")
    else:
        assert import_hf(src, tmp_path / "run").parent.parent == tmp_path / "run"
    ours, tok, _ = load_model(tmp_path / "run")
    diff = compare(hf, ours, seq=24)  # 24 > the Mistral window of 7
    assert diff < 1e-4, diff
    # the tokenizer came along: same ids as transformers' own, EOS from tokenizer_config.json
    auto = transformers.AutoTokenizer.from_pretrained(src)
    text = "def f(x):\n    return x + 1  # héllo"
    assert tok.encode(text) == auto.encode(text, add_special_tokens=False)
    assert tok.eos_id == auto.eos_token_id and tok.bos_id == auto.bos_token_id
    assert json.loads((tmp_path / "run" / "import.json").read_text())["import"] == hc.model_type


def test_import_catches_unused_weights_and_refuses_gpt2(hf_tokenizer, tmp_path):
    from safetensors.torch import load_file, save_file

    hf = transformers.AutoModelForCausalLM.from_config(HF_CASES["llama"]())
    src = save_hf(hf, hf_tokenizer, tmp_path / "src")
    sd = load_file(src / "model.safetensors")
    sd["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(64)  # a weight no mapping reads
    save_file(sd, src / "model.safetensors")
    with pytest.raises(AdambaError, match="does not use: model.layers.0.self_attn.q_proj.bias"):
        import_hf(src, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    g = transformers.AutoModelForCausalLM.from_config(
        transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2, n_positions=32)
    )
    src2 = save_hf(g, hf_tokenizer, tmp_path / "gpt2")
    res = adamba("import", "hf", str(src2), "--out", str(tmp_path / "run2"))
    assert_clean_error(res, "GPT-2 is not supported", "learned position embeddings")


# ---- export ---------------------------------------------------------------------------------

EXPORTS = {
    # adamba's defaults: ReLU^2 MLP + QK-norm -> Qwen3 with a relu gate equal to up
    "relu2-qknorm": ({}, "qwen3"),
    "swiglu-llama": ({"mlp": {"act": "swiglu"}, "attn": {"qk_norm": False}, "tie_embeddings": True}, "llama"),
    "window-mistral": ({"mlp": {"act": "swiglu"}, "attn": {"qk_norm": False, "window": 6}}, "mistral"),
    "window-qwen3": ({"attn": {"window": 6}}, "qwen3"),
    "mamba2": ({"pattern": "M", "mamba": {**MAMBA, "ffn": "none"}}, "mamba2"),
    "hybrid-bamba": (
        {
            "pattern": "MAM",
            "n_layer": 3,
            "mlp": {"act": "swiglu"},
            "attn": {"qk_norm": False},
            "mamba": MAMBA,
        },
        "bamba",
    ),
    "hybrid-bamba-no-ffn": (
        {
            "pattern": "AM",
            "mlp": {"act": "swiglu"},
            "attn": {"qk_norm": False},
            "mamba": {**MAMBA, "ffn": "none"},
        },
        "bamba",
    ),
}
BASE = {
    "vocab_size": 400,
    "d_model": 32,
    "n_layer": 2,
    "max_seq_len": 64,
    "attn": {"n_head": 4, "n_kv_head": 2},
}


def adamba_ckpt(tmp_path, tiny_data, **kw):
    cfg = model_config(BASE, **kw)
    torch.manual_seed(0)
    model = randomised(LM(cfg))
    save_checkpoint(tmp_path / "ours", 0, model, Config(model=cfg), tiny_data["tokenizer"])
    return model


@pytest.mark.parametrize("case", list(EXPORTS))
def test_export_loads_in_transformers(case, tiny_data, tmp_path):
    kw, model_type = EXPORTS[case]
    model = adamba_ckpt(tmp_path, tiny_data, **kw)
    res = adamba("export", "hf", str(tmp_path / "ours"), "--out", str(tmp_path / "hf"))
    assert res.returncode == 0, res.stderr
    assert "exported as" in res.stdout
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert hf.config.model_type == model_type
    assert compare(hf, model) < 1e-4
    # the tokenizer: AutoTokenizer encodes ordinary text as adamba does
    from adamba.data.tokenizer import Tokenizer

    ours = Tokenizer.load(tiny_data["tokenizer"])
    auto = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "class A:\n    def f(self, x=3.5):  # naïve\n        return [x] * 2\n"
    assert auto.encode(text, add_special_tokens=False) == ours.encode(text)
    assert auto.eos_token_id == ours.eos_id and auto.bos_token_id == ours.bos_id
    # and back: import of the export gives the same weights
    import_hf(tmp_path / "hf", tmp_path / "back")
    back, tok_back, _ = load_model(tmp_path / "back")
    assert tok_back.encode(text) == ours.encode(text)
    if back.cfg.layer_ffns() == model.cfg.layer_ffns():
        sd, sd_back = model.state_dict(), back.state_dict()
        assert set(sd) == set(sd_back) and all(torch.equal(sd[k], sd_back[k]) for k in sd)
    else:  # Bamba has an MLP in every layer: the layers without one come back with a zero MLP
        x = torch.randint(0, 400, (2, 16))
        assert torch.allclose(back(x)[0], model(x)[0], atol=1e-6)


@pytest.mark.parametrize(
    "kw, needles",
    [
        ({"pattern": "AM", "mamba": MAMBA}, ("Bamba", "QK-norm", "relu2 MLP")),
        ({"pattern": "K", "kda": {"n_head": 2}}, ("KDA layers have no transformers twin",)),
        ({"attn": {"use_rope": False}}, ("use_rope=false",)),
        ({"attn": {"sinks": True, "bias": True}}, ("attention biases, attention sinks",)),
    ],
)
def test_export_refuses_with_the_reason(kw, needles, tiny_data, tmp_path):
    adamba_ckpt(tmp_path, tiny_data, **kw)
    res = adamba("export", "hf", str(tmp_path / "ours"), "--out", str(tmp_path / "hf"))
    assert_clean_error(res, *needles)
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").iterdir())
