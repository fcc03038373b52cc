"""One message schema for every chat / tool-calling source, and parsers into it.

Glaive, ShareGPT, ToolBench and OpenAI-style records all become a `Conversation` of `Message`s
(`role`, `content`, `tool_calls`, tool results carrying `tool_call_id` and `name`), so rendering with
special tokens and assistant-only loss masks is written once, later, against this schema.
A record that cannot be parsed raises `ChatFormatError`; `parse_records` counts and skips it.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from adamba.data.sources import Document, RecordError

ROLES = ("system", "user", "assistant", "tool")


class ChatFormatError(RecordError):
    """A chat record that does not fit the schema; `kind` is a short reason the stats count by."""

    def __init__(self, kind: str, detail: str = ""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]
    id: str = ""


@dataclass
class Message:
    role: str  # one of ROLES
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)  # assistant messages only
    tool_call_id: str = ""  # tool results: the call they answer
    name: str = ""  # tool results: the tool that produced them


@dataclass
class Conversation:
    messages: list[Message]
    tools: list[dict[str, Any]] = field(default_factory=list)  # function specs offered to the model
    id: str = ""
    source: str = ""

    def validate(self) -> Conversation:
        """Raise ChatFormatError unless this is a usable training conversation; returns self."""
        if not self.messages:
            raise ChatFormatError("no messages")
        pending: dict[str, str] = {}  # open tool call id -> tool name
        for i, m in enumerate(self.messages):
            if m.role not in ROLES:
                raise ChatFormatError("unknown role", f"message {i}: {m.role!r}")
            if not isinstance(m.content, str):
                raise ChatFormatError("content is not text", f"message {i}: {type(m.content).__name__}")
            if m.role == "system" and i != 0:
                raise ChatFormatError("system message not first", f"message {i}")
            if m.tool_calls and m.role != "assistant":
                raise ChatFormatError("tool calls outside an assistant message", f"message {i}")
            if m.role in ("user", "system") and not m.content.strip():
                raise ChatFormatError(f"empty {m.role} message", f"message {i}")
            if m.role == "assistant":
                if not m.content.strip() and not m.tool_calls:
                    raise ChatFormatError("empty assistant message", f"message {i}")
                pending.update({c.id: c.name for c in m.tool_calls})
            if m.role == "tool":
                if m.tool_call_id not in pending:
                    raise ChatFormatError("tool result without a tool call", f"message {i}")
                pending.pop(m.tool_call_id)
        if not any(m.role == "assistant" for m in self.messages):
            raise ChatFormatError("no assistant message")
        first = self.messages[1 if self.messages[0].role == "system" else 0]
        if first.role != "user":
            raise ChatFormatError("does not start with a user message", first.role)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Conversation:
        msgs = [
            Message(**{**m, "tool_calls": [ToolCall(**c) for c in m.get("tool_calls", [])]})
            for m in d["messages"]
        ]
        return cls(msgs, list(d.get("tools", [])), d.get("id", ""), d.get("source", ""))

    def to_text(self) -> str:
        """A plain transcript (no special tokens): what curation filters and deduplicates."""
        lines = []
        for m in self.messages:
            if m.role == "tool":
                lines.append(f"Tool ({m.name}): {m.content}")
                continue
            if m.content:
                lines.append(f"{m.role.capitalize()}: {m.content}")
            for c in m.tool_calls:
                lines.append(f"Assistant calls {c.name}({json.dumps(c.arguments, ensure_ascii=False)})")
        return "\n\n".join(lines)


def conversation_document(conv: Conversation) -> Document:
    """A Document for the text pipeline; the structured messages ride along in meta."""
    d = conv.to_dict()
    return Document(
        conv.to_text(), id=conv.id, source=conv.source, meta={"messages": d["messages"], "tools": d["tools"]}
    )


def loads_lenient(text: str) -> Any:
    """JSON, or failing that a Python literal (single quotes, True/None): how chat dumps write arguments."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, TypeError):
        pass
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ChatFormatError("unparseable arguments", repr(text[:60])) from None


def _arguments(value: Any) -> dict[str, Any]:
    args = loads_lenient(value) if isinstance(value, str) else value
    if args is None or args == "":
        return {}
    if not isinstance(args, dict):
        raise ChatFormatError("arguments are not an object", type(args).__name__)
    return args


# --- Glaive function calling (glaiveai/glaive-function-calling-v2): {"system": str, "chat": str} ---

_GLAIVE_TURN = re.compile(r"(?m)^(USER|ASSISTANT|FUNCTION RESPONSE):[ \t]?")
# {"name": "f", "arguments": '{...}'}: the arguments are a single-quoted JSON string, not JSON
_GLAIVE_QUOTED = re.compile(
    r"""^\{\s*"name"\s*:\s*"(?P<name>[^"]+)"\s*,\s*"arguments"\s*:\s*'(?P<args>.*)'\s*\}$""", re.S
)
_EOT = "<|endoftext|>"


def _glaive_call(text: str) -> ToolCall:
    text = text.strip()
    if m := _GLAIVE_QUOTED.match(text):
        return ToolCall(m["name"], _arguments(m["args"]))
    obj = loads_lenient(text)
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        raise ChatFormatError("function call without a name", repr(text[:60]))
    return ToolCall(obj["name"], _arguments(obj.get("arguments", {})))


def _json_objects(text: str) -> list[dict[str, Any]]:
    """Every top-level JSON object in free text (Glaive lists function specs one after another)."""
    dec, out, i = json.JSONDecoder(), [], text.find("{")
    while i != -1:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            raise ChatFormatError("unparseable function spec", repr(text[i : i + 40])) from None
        if isinstance(obj, dict):
            out.append(obj)
        i = text.find("{", end)
    return out


def parse_glaive(record: dict[str, Any]) -> Conversation:
    """Glaive's `SYSTEM:` prompt (function specs as JSON) and `USER:/ASSISTANT:/FUNCTION RESPONSE:` chat."""
    system, chat = record.get("system", ""), record.get("chat")
    if not isinstance(chat, str) or not isinstance(system, str):
        raise ChatFormatError("glaive record needs string fields 'system' and 'chat'")
    system = system.strip().removeprefix("SYSTEM:").strip()
    tools = _json_objects(system)
    prose = system[: system.find("{")].strip() if tools else system
    messages = [Message("system", prose)] if prose else []
    parts = _GLAIVE_TURN.split(chat)
    if parts[0].strip():
        raise ChatFormatError("text before the first turn", repr(parts[0][:40]))
    pending: list[ToolCall] = []
    n_calls = 0
    for role, body in zip(parts[1::2], parts[2::2]):
        body = body.replace(_EOT, "").strip()
        if role == "USER":
            messages.append(Message("user", body))
        elif role == "ASSISTANT":
            content, sep, call = body.partition("<functioncall>")
            calls = []
            if sep:
                calls = [_glaive_call(call)]
                calls[0].id = f"call_{n_calls}"
                n_calls += 1
                pending += calls
            messages.append(Message("assistant", content.strip(), calls))
        else:  # FUNCTION RESPONSE answers the oldest open call
            if not pending:
                raise ChatFormatError("tool result without a tool call")
            call = pending.pop(0)
            messages.append(Message("tool", body, tool_call_id=call.id, name=call.name))
    return Conversation(messages, tools, str(record.get("id", ""))).validate()


# --- ShareGPT ({"conversations": [{"from", "value"}]}) and OpenAI-style ({"messages": [{"role", "content"}]}) ---

SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bard": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "function_call": "assistant",  # LLaMA-Factory style: value is {"name", "arguments"}
    "observation": "tool",
    "function": "tool",  # ToolBench
    "tool": "tool",
}
_REACT = re.compile(r"Action:\s*(?P<name>[^\n]+?)\s*\nAction Input:\s*(?P<args>.*)$", re.S)


def _openai_call(c: Any) -> ToolCall:
    if not isinstance(c, dict):
        raise ChatFormatError("tool call is not an object")
    fn = c.get("function", c)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise ChatFormatError("tool call without a function name")
    return ToolCall(fn["name"], _arguments(fn.get("arguments", {})), str(c.get("id", "")))


def parse_sharegpt(record: dict[str, Any], react: bool = False) -> Conversation:
    """ShareGPT turns (`from`/`value`), or OpenAI messages (`role`/`content`/`tool_calls`).

    react=True reads ToolBench's assistant turns, `Thought: ... Action: f Action Input: {...}`,
    as tool calls.
    """
    turns = next((record[k] for k in ("conversations", "conversation", "messages") if k in record), None)
    if not isinstance(turns, list):
        raise ChatFormatError("no 'conversations' or 'messages' list")
    tools = record.get("tools", [])
    if isinstance(tools, str):
        tools = loads_lenient(tools) if tools.strip() else []
    if not isinstance(tools, list):
        raise ChatFormatError("'tools' is not a list")
    messages: list[Message] = []
    pending: list[ToolCall] = []
    n_calls = 0
    for t in turns:
        if not isinstance(t, dict):
            raise ChatFormatError("a turn is not an object")
        who = t.get("from", t.get("role"))
        value = t.get("value", t.get("content"))
        value = "" if value is None and t.get("tool_calls") else value
        if who not in SHAREGPT_ROLES:
            raise ChatFormatError("unknown speaker", repr(who))
        if not isinstance(value, str):
            raise ChatFormatError("turn without text", repr(who))
        role, calls = SHAREGPT_ROLES[who], []
        if who == "function_call":
            calls, value = [_glaive_call(value)], ""
        elif t.get("tool_calls"):
            calls = [_openai_call(c) for c in t["tool_calls"]]
        elif react and role == "assistant" and (m := _REACT.search(value)):
            calls = [ToolCall(m["name"].strip(), _react_args(m["args"]))]
            value = value[: m.start()].strip()
        for c in calls:
            c.id = c.id or f"call_{n_calls}"
            n_calls += 1
        pending += calls
        msg = Message(role, value.strip(), calls)
        if role == "tool":
            call_id = t.get("tool_call_id")
            call = next((c for c in pending if c.id == call_id), pending[0] if pending else None)
            if call is None:
                raise ChatFormatError("tool result without a tool call")
            pending.remove(call)
            msg.tool_call_id, msg.name = call.id, t.get("name") or call.name
        messages.append(msg)
    return Conversation(messages, tools, str(record.get("id", ""))).validate()


def _react_args(text: str) -> dict[str, Any]:
    text = text.strip()
    try:
        return _arguments(text)
    except ChatFormatError:
        return {"input": text}  # ToolBench sometimes passes a bare string


def parse_toolbench(record: dict[str, Any]) -> Conversation:
    """ToolBench (ToolLLaMA data): ShareGPT turns with ReAct `Action:`/`Action Input:` tool calls."""
    return parse_sharegpt(record, react=True)


@dataclass
class ChatStats:
    parsed: int = 0
    skipped: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # error message (first words) -> count
    examples: list[str] = field(default_factory=list)


def parse_records(
    records: Iterable[dict[str, Any]],
    parser: Callable[[dict[str, Any]], Conversation],
    stats: ChatStats | None = None,
    source: str = "",
) -> Iterator[Conversation]:
    """Parse a stream of records, counting and skipping the malformed ones."""
    stats = stats if stats is not None else ChatStats()
    for i, rec in enumerate(records):
        try:
            if not isinstance(rec, dict):
                raise ChatFormatError("record is not an object")
            conv = parser(rec)
        except ChatFormatError as e:
            stats.skipped += 1
            stats.reasons[e.kind] = stats.reasons.get(e.kind, 0) + 1
            if len(stats.examples) < 5:
                stats.examples.append(f"record {i}: {e}")
            continue
        conv.id, conv.source = conv.id or str(i), conv.source or source
        stats.parsed += 1
        yield conv
