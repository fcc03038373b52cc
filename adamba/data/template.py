"""The chat template: a `Conversation` as token ids with special tokens, and a reply parsed back.

One format for training (SFT masks), `adamba chat` and the server, so a model is always talked
to the way it was taught:

    <|bos|> [<|system|> system text [+ tool specs] <|end|>]
    <|user|> text <|end|>
    <|assistant|> text [<|tool_call|> {"name": ..., "arguments": {...}} <|/tool_call|>]... <|end|>
    <|tool_result|> result text <|/tool_result|>
    ... <|assistant|>            <- the generation prompt; the reply ends at <|end|> (or <|eos|>)

Message text is encoded with special tokens disabled (Tokenizer.encode), so a user typing
"<|end|>" sends plain bytes and can never close a turn or forge a tool call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from adamba.data.chat import Conversation, Message, ToolCall
from adamba.data.tokenizer import Tokenizer


@dataclass
class Rendered:
    """Token ids of a conversation and, per id, whether training should predict it (1: the
    assistant's own tokens and the <|end|> closing its turn)."""

    ids: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)

    def add(self, ids: list[int], train: bool = False) -> None:
        self.ids += ids
        self.mask += [int(train)] * len(ids)


def tools_text(tools: list[dict[str, Any]]) -> str:
    """The tool specs as the system turn states them: one JSON object per line."""
    return "You can call these tools:\n" + "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)


def render(
    tok: Tokenizer, messages: list[Message], tools: list[dict[str, Any]] | None = None, prompt: bool = True
) -> Rendered:
    """`messages` as ids + training mask; `prompt`: end with <|assistant|> for the model to reply."""
    sp = tok.special_id
    out = Rendered()
    out.add([tok.bos_id])
    system = messages[0].content if messages and messages[0].role == "system" else ""
    if tools:
        system = (system + "\n\n" if system else "") + tools_text(tools)
    if system:
        out.add([sp("<|system|>")] + tok.encode(system) + [sp("<|end|>")])
    for m in messages:
        if m.role == "system":
            continue
        if m.role == "user":
            out.add([sp("<|user|>")] + tok.encode(m.content) + [sp("<|end|>")])
        elif m.role == "tool":
            out.add([sp("<|tool_result|>")] + tok.encode(m.content) + [sp("<|/tool_result|>")])
        elif m.role == "assistant":
            out.add([sp("<|assistant|>")])
            body = tok.encode(m.content) if m.content else []
            for c in m.tool_calls:
                call = json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False)
                body += [sp("<|tool_call|>")] + tok.encode(call) + [sp("<|/tool_call|>")]
            out.add(body + [sp("<|end|>")], train=True)
        else:
            raise ValueError(f"unknown role {m.role!r}")
    if prompt:
        out.add([sp("<|assistant|>")])
    return out


def render_conversation(tok: Tokenizer, conv: Conversation) -> Rendered:
    """A whole training conversation (no generation prompt)."""
    return render(tok, conv.messages, conv.tools, prompt=False)


def stop_ids(tok: Tokenizer) -> set[int]:
    """The tokens that end an assistant reply."""
    return {tok.special_id("<|end|>"), tok.eos_id}


def parse_reply(tok: Tokenizer, ids: list[int]) -> tuple[Message, bool]:
    """A generated reply (ids after the <|assistant|> prompt) as an assistant Message, and whether
    it ended properly (<|end|> / <|eos|> seen, rather than cut off by a length limit). A tool call
    whose body is not a JSON object with a "name" stays in the text, as the model wrote it."""
    sp = tok.special_id
    ended = False
    end = len(ids)
    for i, t in enumerate(ids):
        if t in stop_ids(tok):
            end, ended = i, True
            break
    ids = ids[:end]
    open_, close = sp("<|tool_call|>"), sp("<|/tool_call|>")
    text: list[int] = []
    calls: list[ToolCall] = []
    i = 0
    while i < len(ids):
        if ids[i] == open_ and close in ids[i + 1 :]:
            j = ids.index(close, i + 1)
            call = _call(tok.decode(ids[i + 1 : j]), len(calls))
            if call is not None:
                calls.append(call)
                i = j + 1
                continue
        text.append(ids[i])
        i += 1
    return Message("assistant", tok.decode(text).strip(), calls), ended


def _call(body: str, n: int) -> ToolCall | None:
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", {})
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], args, f"call_{n}")
