"""Generation with tools: a scripted model calls the calculator; the loop runs the call, forces the
result in, and the model answers. The rollout is the chat template's rendering of the conversation
it produced, token for token, and its mask is the template's SFT mask. `adamba sample --tools`
runs a real checkpoint through the same loop."""

import json

import torch
from torch import nn

from adamba.data.chat import Message
from adamba.data.template import render
from adamba.data.tokenizer import Tokenizer
from adamba.tools import default_registry
from adamba.tools.loop import generate_with_tools
from tests.helpers import adamba


class Scripted(nn.Module):
    """Emits a fixed token script, one token per forward call, whatever it is fed."""

    def __init__(self, script: list[int], vocab: int):
        super().__init__()
        self.script, self.vocab = script, vocab
        self.dummy = nn.Parameter(torch.zeros(1))

    def init_state(self, batch):
        return {"i": 0}

    def forward(self, idx, state=None):
        logits = torch.full((idx.shape[0], idx.shape[1], self.vocab), -1e9)
        logits[:, -1, self.script[min(state["i"], len(self.script) - 1)]] = 0.0
        state["i"] += 1
        return logits, None


def test_a_tool_call_round_trip(tiny_data):
    tok = Tokenizer.load(tiny_data["tokenizer"])
    sp = tok.special_id
    tools = default_registry()
    user = [Message("user", "What is 17*23+5?")]
    prompt = render(tok, user, tools.specs(["calculator"])).ids
    call = json.dumps({"name": "calculator", "arguments": {"expression": "17*23+5"}})
    script = [sp("<|tool_call|>")] + tok.encode(call) + [sp("<|/tool_call|>"), sp("<|end|>")]
    script += tok.encode("It is 396.") + [sp("<|end|>")]
    model = Scripted(script, tok.vocab_size)
    events = []
    r = generate_with_tools(
        model, tok, prompt, tools, max_new_tokens=200, on_event=lambda k, v: events.append(k)
    )
    assert r.ended and len(r.calls) == 1 and r.calls[0][1].text() == "396"
    assert [m.role for m in r.messages] == ["assistant", "tool", "assistant"]
    assert r.messages[-1].content == "It is 396." and events.count("call") == 1
    # the rollout is the template's rendering of the conversation, mask included
    whole = render(tok, user + r.messages, tools.specs(["calculator"]), prompt=False)
    assert prompt + r.ids == whole.ids
    assert r.mask == whole.mask[len(prompt) :]
    assert sum(r.mask) == len(script)  # every generated token trains, forced ones do not


def test_call_budget_and_token_budget(tiny_data):
    tok = Tokenizer.load(tiny_data["tokenizer"])
    sp = tok.special_id
    call = json.dumps({"name": "calculator", "arguments": {"expression": "1+1"}})
    loop = [sp("<|tool_call|>")] + tok.encode(call) + [sp("<|/tool_call|>"), sp("<|end|>")]
    model = Scripted(loop * 10, tok.vocab_size)
    r = generate_with_tools(model, tok, [tok.bos_id], default_registry(), max_new_tokens=500, max_calls=2)
    assert len(r.calls) == 2 and r.ended  # the third call is not run: the turn ends there
    r = generate_with_tools(Scripted(loop * 10, tok.vocab_size), tok, [tok.bos_id], default_registry(), 5)
    assert sum(r.mask) == 5 and not r.ended


def test_sample_with_tools_cli(tiny_data, tmp_path):
    from adamba.checkpoint import save_checkpoint
    from adamba.config import Config
    from adamba.model.lm import LM
    from tests.helpers import model_config

    cfg = model_config(
        {"vocab_size": 400, "d_model": 32, "n_layer": 1, "attn": {"n_head": 2, "n_kv_head": 1}}
    )
    save_checkpoint(tmp_path / "run", 0, LM(cfg), Config(model=cfg), tiny_data["tokenizer"])
    res = adamba(
        "sample",
        "--ckpt",
        str(tmp_path / "run"),
        "--prompt",
        "What is 2+3?",
        "--tools",
        "calculator",
        "--max-new-tokens",
        "12",
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("user: What is 2+3?")
