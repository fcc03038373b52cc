"""`adamba surgery chat-tokens` (issue 27, point 1): an imported Llama (its own tokenizer, no chat
tokens) gains them inside its padded vocabulary with its function unchanged bit for bit; chat,
chat SFT data and an SFT run then work on it. Where the vocabulary has no spare rows (tied and
untied heads), the embedding and head grow, the old tokens' logits stay bit for bit and their
log probabilities move by the new rows' small share (measured)."""

import dataclasses
import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from adamba.checkpoint import load_model  # noqa: E402
from adamba.config import load_config  # noqa: E402
from adamba.data.chat import Message  # noqa: E402
from adamba.data.sft import parse_qa, write_chat_shards  # noqa: E402
from adamba.data.tokenizer import CHAT_TOKENS, Tokenizer  # noqa: E402
from adamba.errors import AdambaError  # noqa: E402
from adamba.hf.convert import import_hf  # noqa: E402
from adamba.model.lm import LM  # noqa: E402
from adamba.serve.chat import ChatSession  # noqa: E402
from adamba.surgery.chat_tokens import add_chat_tokens  # noqa: E402
from adamba.train import trainer  # noqa: E402
from tests.helpers import adamba, assert_clean_error  # noqa: E402
from tests.hf.test_convert import HF_CASES, hf_tokenizer, randomised, save_hf  # noqa: E402, F401

TEXT = "def f(x):\n    return x + 1  # héllo <|user|>"


@pytest.fixture(scope="module")
def imported(hf_tokenizer, tmp_path_factory):  # noqa: F811  (the fixture imported above)
    tmp = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    hf = randomised(transformers.AutoModelForCausalLM.from_config(HF_CASES["llama"]()))
    import_hf(save_hf(hf, hf_tokenizer, tmp / "src"), tmp / "run")
    return tmp / "run"


def test_imported_llama_gains_chat_tokens_in_its_padding(imported, tmp_path):
    old, old_tok, _ = load_model(imported)
    assert not old_tok.has_chat and old_tok.vocab_size < old.cfg.vocab_size  # 280 tokens, 300 rows
    res = adamba("surgery", "chat-tokens", "--ckpt", str(imported), "--out", str(tmp_path / "chat"))
    assert res.returncode == 0, res.stderr
    assert "added 10 special tokens" in res.stdout and "reused padding" in res.stdout
    new, tok, ckpt = load_model(tmp_path / "chat")  # the extended tokenizer travels with it
    assert tok.has_chat and tok.foreign and tok.vocab_size == old_tok.vocab_size + len(CHAT_TOKENS)
    assert sorted(tok.special_id(t) for t in CHAT_TOKENS) == list(range(old_tok.vocab_size, tok.vocab_size))
    assert tok.encode(TEXT) == old_tok.encode(TEXT)  # ordinary text (even "<|user|>") encodes as before
    assert (tok.bos_id, tok.eos_id) == (old_tok.bos_id, old_tok.eos_id)
    assert new.cfg.vocab_size == old.cfg.vocab_size
    x = torch.randint(0, old_tok.vocab_size, (2, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(new(x)[0], old(x)[0])  # the whole function, padding logits included
    rec = json.loads((tmp_path / "chat" / "surgery.json").read_text())
    assert rec["max_abs_logprob_change"] == 0.0 and rec["old_logits_identical"] is True

    # what it was for: chat no longer refuses, chat SFT data renders, an SFT phase trains on it
    reply = "".join(ChatSession(new, tok, max_new_tokens=4, temperature=0.0).reply("hi"))
    assert isinstance(reply, str)
    convs = [parse_qa({"question": f"What is {a}+1?", "answer": f"#### {a + 1}"}) for a in range(20)]
    shards = write_chat_shards(convs, tok, tmp_path / "sft")
    conf = tmp_path / "sft.toml"
    conf.write_text('[[phase]]\nname = "sft"\nobjective = "sft"\nsteps = 3\n')
    over = [
        f"train.init_from={tmp_path / 'chat'}",
        f"data.train={shards}",
        f"data.tokenizer={ckpt.tokenizer_path}",
        "data.seq_len=32",
        "train.batch_size=2",
        "train.max_steps=3",
        "train.eval_every=0",
        "run.progress=false",
        "run.tensorboard=false",
        f"run.out_dir={tmp_path / 'sft-run'}",
    ]
    cfg = load_config(str(conf), over)
    cfg.model = ckpt.cfg.model  # the checkpoint's [model] table
    result = trainer.run(cfg.validate())
    assert result.steps == 3 and result.val is None


@pytest.mark.parametrize("tied", [False, True])
def test_rows_grow_when_there_is_no_padding(imported, tied):
    old, tok, _ = load_model(imported)
    cfg = dataclasses.replace(old.cfg, vocab_size=tok.vocab_size, tie_embeddings=tied)
    model = LM(cfg).eval()
    new, new_tok, rec = add_chat_tokens(model, tok)
    assert rec["rows"] == f"grew by {len(CHAT_TOKENS)}" and new.cfg.vocab_size == new_tok.vocab_size
    x = torch.randint(0, tok.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before, after = model(x)[0], new(x)[0]
    assert torch.equal(after[..., : tok.vocab_size], before)  # old logits bit for bit
    mean = model.embed.weight.mean(0)
    assert torch.allclose(new.embed.weight[tok.vocab_size :], mean.expand(len(CHAT_TOKENS), -1))
    assert (new.head.weight is new.embed.weight) == tied
    shift = (after.log_softmax(-1)[..., : tok.vocab_size] - before.log_softmax(-1)).abs().max()
    assert 0 < float(shift) < 0.1 and abs(float(shift) - rec["max_abs_logprob_change"]) < 0.1


def test_refusals(imported, tiny_data, tmp_path):
    res = adamba("chat", "--ckpt", str(imported), "--max-new-tokens", "4")
    assert_clean_error(res, "no adamba chat tokens", "adamba surgery chat-tokens")
    own = Tokenizer.load(tiny_data["tokenizer"])
    with pytest.raises(AdambaError, match="already has adamba's chat tokens"):
        add_chat_tokens(LM(load_model(imported)[0].cfg), own)
    res = adamba("surgery", "chat-tokens", "--ckpt", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert_clean_error(res)
    assert not (tmp_path / "o").exists()
    msg = Message("user", "hi")
    with pytest.raises(AdambaError, match="adamba surgery chat-tokens"):
        from adamba.data.template import render

        render(load_model(imported)[1], [msg])
