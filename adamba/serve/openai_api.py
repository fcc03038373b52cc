"""OpenAI's request bodies, checked field by field into plain dataclasses, and its error shape.

Every bad input becomes an `APIError` (4xx, `{"error": {"message", "type", "param", "code"}}`)
naming the field, as OpenAI's API answers, so clients show a useful message and the server
never answers a user mistake with a 500.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from adamba.data.chat import ROLES, Message, ToolCall

MAX_N = 8  # choices per request
MAX_STOP = 4  # stop sequences, as OpenAI allows
MAX_MESSAGES = 512
MAX_CHARS = 1_000_000  # all message text of one request


class APIError(Exception):
    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str = ""
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or {401: "authentication_error", 404: "invalid_request_error"}.get(
            status, "invalid_request_error" if status < 500 else "server_error"
        )

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Params:
    """Sampling and output settings shared by chat and text completions."""

    model: str = ""
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int | None = None  # extension
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1
    stream: bool = False
    include_usage: bool = False
    mode: str | None = None  # extension: compute mode (ghost/whisper/normal/think/auto)


@dataclass
class ChatRequest(Params):
    messages: list[Message] = field(default_factory=list)
    tools: list[dict[str, Any]] = field(default_factory=list)
    tool_choice: Any = None


@dataclass
class CompletionRequest(Params):
    prompt: str = ""


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise APIError(400, "the request body must be a JSON object", code="invalid_json")
    return body


def _typed(body: dict, key: str, kinds: tuple, what: str, default: Any = None) -> Any:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, bool) and bool not in kinds or not isinstance(v, kinds):
        raise APIError(
            400, f"'{key}' must be {what}, got {json.dumps(v)[:80]}", param=key, code="invalid_type"
        )
    return v


def _number(body: dict, key: str, lo: float, hi: float, default: float) -> float:
    v = float(_typed(body, key, (int, float), "a number", default))
    if not (math.isfinite(v) and lo <= v <= hi):
        raise APIError(
            400, f"'{key}' must be between {lo:g} and {hi:g}, got {v:g}", param=key, code="invalid_value"
        )
    return v


def _params(body: dict, p: Params, modes: tuple[str, ...]) -> None:
    p.model = _typed(body, "model", (str,), "a string", "")
    mt = body.get("max_completion_tokens", body.get("max_tokens"))
    key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    if mt is not None:
        p.max_tokens = _typed({key: mt}, key, (int,), "an integer")
        if p.max_tokens < 1:
            raise APIError(
                400, f"'{key}' must be at least 1, got {p.max_tokens}", param=key, code="invalid_value"
            )
    p.temperature = _number(body, "temperature", 0.0, 2.0, 1.0)
    p.top_p = _number(body, "top_p", 0.0, 1.0, 1.0)
    if p.top_p <= 0:
        raise APIError(400, "'top_p' must be greater than 0", param="top_p", code="invalid_value")
    p.top_k = _typed(body, "top_k", (int,), "an integer")
    if p.top_k is not None and p.top_k < 0:
        raise APIError(400, f"'top_k' must be >= 0, got {p.top_k}", param="top_k", code="invalid_value")
    stop = _typed(body, "stop", (str, list), "a string or a list of strings", [])
    p.stop = [stop] if isinstance(stop, str) else stop
    if len(p.stop) > MAX_STOP or not all(isinstance(s, str) and s for s in p.stop):
        raise APIError(
            400, f"'stop' must be up to {MAX_STOP} non-empty strings", param="stop", code="invalid_value"
        )
    p.seed = _typed(body, "seed", (int,), "an integer")
    if p.seed is not None and not 0 <= p.seed < 2**63:
        raise APIError(400, "'seed' must lie in [0, 2**63)", param="seed", code="invalid_value")
    p.n = _typed(body, "n", (int,), "an integer", 1)
    if not 1 <= p.n <= MAX_N:
        raise APIError(400, f"'n' must be between 1 and {MAX_N}, got {p.n}", param="n", code="invalid_value")
    p.stream = _typed(body, "stream", (bool,), "true or false", False)
    opts = _typed(body, "stream_options", (dict,), "an object", {})
    p.include_usage = bool(_typed(opts, "include_usage", (bool,), "true or false", False))
    p.mode = _typed(body, "mode", (str,), "a string")
    if p.mode is not None and p.mode not in modes:
        raise APIError(
            400,
            f"'mode' must be one of {', '.join(modes)}, got {p.mode!r}",
            param="mode",
            code="invalid_value",
        )
    if p.mode is not None and p.top_p < 1.0:
        raise APIError(
            400, "'top_p' below 1 is not available with a compute 'mode'", param="top_p", code="invalid_value"
        )


def _message(i: int, m: Any) -> Message:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise APIError(400, f"'{where}' must be an object", param=where, code="invalid_type")
    role = m.get("role")
    if role not in ROLES and role != "developer":
        raise APIError(
            400,
            f"'{where}.role' must be one of {', '.join(ROLES)}, got {json.dumps(role)}",
            param=f"{where}.role",
            code="invalid_value",
        )
    content = m.get("content") or ""
    if isinstance(content, list):  # content parts: text only
        parts = [c.get("text") for c in content if isinstance(c, dict)]
        if len(parts) != len(content) or not all(isinstance(t, str) for t in parts):
            raise APIError(
                400,
                f"'{where}.content' parts must be text parts",
                param=f"{where}.content",
                code="invalid_type",
            )
        content = "".join(parts)
    if not isinstance(content, str):
        raise APIError(
            400, f"'{where}.content' must be a string", param=f"{where}.content", code="invalid_type"
        )
    calls = []
    for j, c in enumerate(m.get("tool_calls") or []):
        fn = c.get("function") if isinstance(c, dict) else None
        try:
            args = json.loads(fn.get("arguments") or "{}")
            assert isinstance(fn.get("name"), str) and isinstance(args, dict)
        except Exception:
            raise APIError(
                400,
                f"'{where}.tool_calls[{j}]' must have function.name and JSON object arguments",
                param=f"{where}.tool_calls",
                code="invalid_value",
            ) from None
        calls.append(ToolCall(fn["name"], args, str(c.get("id", ""))))
    return Message(
        "system" if role == "developer" else role,
        content,
        calls,
        str(m.get("tool_call_id") or ""),
        str(m.get("name") or ""),
    )


def parse_chat(body: dict, modes: tuple[str, ...]) -> ChatRequest:
    req = ChatRequest()
    _params(body, req, modes)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "'messages' must be a non-empty list", param="messages", code="invalid_value")
    if len(msgs) > MAX_MESSAGES:
        raise APIError(400, f"at most {MAX_MESSAGES} messages", param="messages", code="invalid_value")
    req.messages = [_message(i, m) for i, m in enumerate(msgs)]
    if sum(len(m.content) for m in req.messages) > MAX_CHARS:
        raise APIError(
            400,
            f"the messages hold more than {MAX_CHARS:,} characters",
            param="messages",
            code="invalid_value",
        )
    sys_late = [i for i, m in enumerate(req.messages) if m.role == "system" and i > 0]
    if sys_late:
        raise APIError(
            400,
            f"a system message must come first (messages[{sys_late[0]}])",
            param="messages",
            code="invalid_value",
        )
    tools = _typed(body, "tools", (list,), "a list", [])
    for j, t in enumerate(tools):
        if not (
            isinstance(t, dict)
            and isinstance(t.get("function"), dict)
            and isinstance(t["function"].get("name"), str)
        ):
            raise APIError(
                400,
                f"'tools[{j}]' must be {{type: function, function: {{name, ...}}}}",
                param="tools",
                code="invalid_value",
            )
    req.tools = [t["function"] for t in tools]
    req.tool_choice = body.get("tool_choice")
    if req.tool_choice == "none":
        req.tools = []
    return req


def parse_completion(body: dict, modes: tuple[str, ...]) -> CompletionRequest:
    req = CompletionRequest()
    _params(body, req, modes)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise APIError(
            400, "'prompt' must be a string (one prompt per request)", param="prompt", code="invalid_type"
        )
    if len(prompt) > MAX_CHARS:
        raise APIError(
            400, f"'prompt' holds more than {MAX_CHARS:,} characters", param="prompt", code="invalid_value"
        )
    req.prompt = prompt
    return req
