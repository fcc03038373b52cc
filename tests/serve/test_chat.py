"""`adamba chat`: the session renders the history through the chat template, streams replies,
forgets on /reset, trims to the context, switches compute modes; the command runs as a user
meets it."""

import pytest

from adamba.checkpoint import load_model
from adamba.data.chat import Message
from adamba.data.template import render
from adamba.errors import AdambaError
from adamba.serve.chat import ChatSession, repl
from tests.helpers import adamba, assert_clean_error


@pytest.fixture(scope="module")
def el(elastic_run):
    return load_model(elastic_run / "el")


def scripted(session, lines):
    """Run the REPL on `lines`; returns everything it wrote."""
    it = iter(lines)

    def read(_prompt):
        try:
            return next(it)
        except StopIteration:
            raise EOFError from None

    out = []
    repl(session, read, out.append)
    return "".join(out), out


def test_history_is_rendered_through_the_template_and_replies_stream(el):
    model, tok, _ = el
    s = ChatSession(model, tok, system="Be brief.", temperature=1.0, max_new_tokens=6, seed=3)
    first = "".join(s.reply("hello"))
    assert first.strip()
    assert [m.role for m in s.messages] == ["user", "assistant"] and s.messages[1].content == first.strip()
    s.messages.append(Message("user", "again"))
    expect = render(tok, [Message("system", "Be brief."), *s.messages]).ids
    assert s.prompt_ids() == expect  # the whole history, as the template renders it
    s.messages.pop()
    text, pieces = scripted(s, ["again", "/reset", "hello", "/exit"])
    assert "(conversation forgotten)" in text
    # after /reset the greedy reply to "hello" is the first one again, streamed piece by piece
    assert (
        text.rstrip().endswith("adamba> " + first + "\n".rstrip())
        or first in text.split("(conversation forgotten)")[1]
    )
    assert [m.content for m in s.messages if m.role == "user"] == ["hello"]
    assert len([p for p in pieces if p]) > 3


def test_old_exchanges_are_dropped_to_fit_the_context(el):
    model, tok, _ = el
    s = ChatSession(model, tok, temperature=0.0, max_new_tokens=8)
    long = "word " * (model.cfg.max_seq_len // 6)
    for _ in range(4):
        "".join(s.reply(long))
    assert len(s.prompt_ids()) + 2 <= model.cfg.max_seq_len
    assert any("oldest messages to fit" in n for n in s.notes)
    assert s.messages[0].role == "user"
    with pytest.raises(AdambaError, match="the message is too long"):
        "".join(s.reply("word " * model.cfg.max_seq_len * 2))
    assert s.messages[-1].role == "assistant" and len(s.messages) >= 2  # history kept, message not


def test_modes_switch_and_dense_refuses(el, elastic_run):
    model, tok, _ = el
    s = ChatSession(model, tok, temperature=0.0, max_new_tokens=4)
    text, _ = scripted(s, ["/mode ghost", "hi", "/mode nope", "/mode off", "hi"])
    assert "(mode ghost)" in text and "ghost: FLOPs/token" in text and "unknown mode 'nope'" in text
    assert s.mode is None
    dense = load_model(elastic_run / "dense")
    text, _ = scripted(ChatSession(dense[0], dense[1]), ["/mode think"])
    assert "elastic" in text.lower() and "(mode think)" not in text


def test_chat_command(elastic_run, tmp_path):
    import subprocess
    import sys

    res = subprocess.run(
        [sys.executable, "-m", "adamba", "chat", "--ckpt", str(elastic_run / "el"), "--max-new-tokens", "5"],
        input="hello\n/reset\n/exit\n",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert "adamba> " in res.stdout and "(conversation forgotten)" in res.stdout
    res = adamba("chat", "--ckpt", str(elastic_run / "dense"), "--mode", "ghost")
    assert_clean_error(res, "elastic")
    res = adamba("chat", "--ckpt", str(tmp_path / "missing"))
    assert_clean_error(res, "missing")
