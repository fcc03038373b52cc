"""GRPO with tools (post.tools): rollouts run the calculator and force its results in; the loss
covers only the tokens the model wrote (the rollout's mask), the "tool" reward term is the share
of successful calls (0 with none), the step's metrics count calls, a tiny model runs a phase end
to end through trainer.run, and bad [post] tool settings are one-line errors."""

import json

import pytest
import torch

import adamba.post.objectives as po
from adamba.config import load_config
from adamba.data.chat import ToolCall
from adamba.data.tokenizer import Tokenizer
from adamba.errors import AdambaError
from adamba.post.rewards import tool_success
from adamba.tools import ToolResult
from adamba.tools.loop import generate_with_tools
from adamba.train import trainer
from adamba.train.monitor import read_metrics
from tests.helpers import tiny_overrides
from tests.post.test_grpo_objective import GRPO_PHASE
from tests.tools.test_loop import Scripted


def overrides(data, out, prompts, steps, *extra):
    return tiny_overrides(data, out, steps) + [
        f"post.prompts={prompts}",
        "post.tools=calculator",
        "post.reward=exact+0.1*tool",
        "post.max_new_tokens=200",
        "post.group_size=4",
        "model.max_seq_len=1024",  # the calculator's spec in the system turn is long
        "train.batch_size=1",
        "train.eval_every=0",
        "train.ckpt_every=0",
        "run.tensorboard=false",
        *extra,
    ]


def setup(tiny_data, tmp_path, steps=1, *extra):
    conf = tmp_path / "g.toml"
    conf.write_text(GRPO_PHASE.format(steps=steps))
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"question": "What is 17*23+5?", "answer": "396"}) + "\n")
    return load_config(str(conf), overrides(tiny_data, tmp_path / "run", prompts, steps, *extra))


def test_tool_success_term():
    call = ToolCall("calculator", {"expression": "1+1"})
    ok, err = (call, ToolResult("2")), (call, ToolResult(error="calculator: bad"))
    assert tool_success([ok]) == 1.0 and tool_success([err]) == 0.0
    assert tool_success([ok, err]) == 0.5 and tool_success([]) == 0.0  # no call earns nothing
    reward, terms = po.parse_reward("exact+0.1*tool", tools=True)
    assert terms == [("exact", 1.0), ("tool", 0.1)] and reward("#### 396", "396") == 1.0


def test_rollouts_mask_forced_tokens_and_score_calls(tiny_data, tmp_path, monkeypatch):
    """A scripted policy (one script per completion of the group) writes calculator calls: one
    that succeeds, one the calculator refuses, two in one turn (one of each), none. Through
    trainer.run: the log probabilities the loss takes are exactly the model-generated tokens of
    each rollout (forced tool results and headers left out) and equal the model's own; rewards
    are exact + 0.1 x the share of successful calls; the metrics count calls and successes."""
    tok = Tokenizer.load(tiny_data["tokenizer"])
    sp = tok.special_id

    def call(expr):
        body = json.dumps({"name": "calculator", "arguments": {"expression": expr}})
        return [sp("<|tool_call|>")] + tok.encode(body) + [sp("<|/tool_call|>")]

    def say(text):
        return tok.encode(text) + [sp("<|end|>")]

    scripts = [
        call("17*23+5") + [sp("<|end|>")] + say("It is 396."),  # exact 1, tool 1
        call("17*/23") + [sp("<|end|>")] + say("It is 0."),  # exact 0, tool 0
        call("17*23+5") + call("1/0") + [sp("<|end|>")] + say("#### 396"),  # exact 1, tool 0.5
        say("It is 396."),  # exact 1, no call: tool 0
    ]
    rollouts, seen = [], []

    def scripted(model, tok_, ids, *a, **k):
        r = generate_with_tools(Scripted(scripts[len(rollouts) % 4], tok.vocab_size), tok_, ids, *a, **k)
        rollouts.append((ids, r))
        return r

    real_logp = po.completion_logp

    def checked(model, seqs, starts, pad, temperature=1.0, keep=None):
        logp, mask = real_logp(model, seqs, starts, pad, temperature, keep)
        if keep is not None and model.training:  # the policy's pass (not the reference's)
            seen.append((seqs, starts, keep, logp.detach(), mask))
            with torch.no_grad():
                for i, s in enumerate(seqs):
                    lg = torch.log_softmax(model(torch.tensor([s]))[0][0].float() / temperature, -1)
                    pos = mask[i].nonzero().squeeze(-1)
                    want = lg[pos].gather(-1, torch.tensor(s)[pos + 1][:, None]).squeeze(-1)
                    torch.testing.assert_close(logp[i][pos], want, rtol=1e-4, atol=1e-4)
        return logp, mask

    monkeypatch.setattr(po, "generate_with_tools", scripted)
    monkeypatch.setattr(po, "completion_logp", checked)
    cfg = setup(tiny_data, tmp_path)
    trainer.run(cfg)
    assert len(rollouts) == 4 and len(seen) == 1
    seqs, starts, keep, logp, mask = seen[0]
    for i, (ids, r) in enumerate(rollouts):
        assert seqs[i] == ids + r.ids and starts[i] == len(ids) and keep[i] == r.mask
        assert 0 in r.mask or i == 3  # the calls' results were forced in
        want = [len(ids) - 1 + t for t, m in enumerate(r.mask) if m]  # position j scores token j + 1
        assert mask[i].nonzero().squeeze(-1).tolist() == want
        assert int(mask[i].sum()) == len(scripts[i]) == sum(r.mask)
    assert [len(r.calls) for _, r in rollouts] == [1, 1, 2, 0]
    assert [[res.ok for _, res in r.calls] for _, r in rollouts] == [[True], [False], [True, False], []]
    # the prompt offered the tool
    assert "calculator" in tok.decode(rollouts[0][0])
    (row,) = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert row["reward"] == pytest.approx((1.1 + 0 + 1.05 + 1.0) / 4)
    assert row["accuracy"] == pytest.approx(0.75) and row["calls"] == pytest.approx(1.0)
    assert row["tool_success"] == pytest.approx(0.5)
    assert row["completion_len"] == pytest.approx(sum(map(len, scripts)) / 4)


def test_grpo_with_tools_runs_end_to_end(tiny_data, tmp_path):
    """A random tiny model, the real rollout loop and the calculator, a KL reference: 3 steps
    through trainer.run; every step logs the tool metrics (the model rarely calls anything)."""
    cfg = setup(tiny_data, tmp_path, 3, "post.max_new_tokens=12", "post.beta=0.1", "post.max_calls=2")
    assert trainer.run(cfg).steps == 3
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 3
    for r in rows:
        assert {"reward", "accuracy", "completion_len", "kl", "calls", "tool_success"} <= set(r)
        assert 1 <= r["completion_len"] <= 12 and 0 <= r["tool_success"] <= 1
        assert torch.isfinite(torch.tensor(r["loss"]))


@pytest.mark.parametrize(
    "extra, needle",
    [
        (
            "post.tools=calculater",
            "post.tools='calculater': unknown tool 'calculater'; write comma-separated",
        ),
        ("post.tools=calculator,calculator", "post.tools='calculator,calculator': a tool named twice"),
        ("post.tools=", "post.reward='exact+0.1*tool'"),  # the tool term needs tools
        ("post.max_calls=0", "post.max_calls=0 is out of range"),
    ],
)
def test_bad_tool_settings_are_one_line(tiny_data, tmp_path, extra, needle):
    with pytest.raises(AdambaError) as e:
        trainer.run(setup(tiny_data, tmp_path, 1, extra))
    assert needle in str(e.value) and "\n" not in str(e.value), str(e.value)
    if extra == "post.tools=":
        assert "'tool' needs post.tools set" in str(e.value)
