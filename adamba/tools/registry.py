"""Tools a model may call: a name, a description, a JSON-schema signature and a function.

A model's call arrives as `{"name": ..., "arguments": {...}}` (what `adamba/data/template.py`
renders between <|tool_call|> tokens, `ToolCall` in `adamba/data/chat.py`). The registry lists the
tools as the specs the system turn states (`specs()`: Glaive-style {"name", "description",
"parameters"}; `openai_specs()` wraps them as {"type": "function", "function": ...}) and
dispatches a call. Everything a model can get wrong (an unknown tool, arguments that do not fit
the schema, an expression the calculator refuses, code that fails) comes back as a ToolResult
with `error` set, never as an exception: the generation loop feeds it back to the model as the
tool's message. What the model cannot cause (the sandbox unavailable here) raises an AdambaError.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
    "null": (type(None),),
}


@dataclass
class ToolResult:
    """What a call produced: `content` (the output the model sees) and, if it failed, a one-line
    `error` saying why."""

    content: str = ""
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def text(self) -> str:
        """The tool message fed back to the model: the output, then the error line if any."""
        if self.error is None:
            return self.content
        return (self.content.rstrip("\n") + "\n" if self.content.strip() else "") + f"error: {self.error}"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of type "object"
    fn: Callable[..., ToolResult | str] = field(repr=False)

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "parameters": self.parameters}

    def signature(self) -> str:
        """`name(arg: type, ...)` for listings."""
        props = self.parameters.get("properties", {})
        req = set(self.parameters.get("required", []))
        args = [f"{k}: {v.get('type', 'any')}" + ("" if k in req else "?") for k, v in props.items()]
        return f"{self.name}({', '.join(args)})"

    def main_parameter(self) -> str:
        """The argument a bare command-line value fills: the first required one."""
        req = self.parameters.get("required") or list(self.parameters.get("properties", {}))
        if not req:
            raise ValueError(f"tool {self.name} takes no arguments")
        return req[0]


def check_arguments(schema: Mapping[str, Any], args: Any) -> str | None:
    """Why `args` does not fit `schema` (the subset tools use: an object of typed properties,
    required names, no extras unless allowed, string length, enums), or None if it does."""
    if not isinstance(args, dict):
        return f"arguments must be a JSON object, not {type(args).__name__}"
    props = schema.get("properties", {})
    missing = [k for k in schema.get("required", []) if k not in args]
    if missing:
        return f"missing argument {', '.join(repr(k) for k in missing)}"
    if schema.get("additionalProperties", True) is False:
        extra = [k for k in args if k not in props]
        if extra:
            return (
                f"unknown argument {', '.join(repr(k) for k in extra)} (takes {', '.join(props) or 'none'})"
            )
    for k, v in args.items():
        p = props.get(k)
        if p is None:
            continue
        t = p.get("type")
        ok = JSON_TYPES.get(t, (object,))
        if not isinstance(v, ok) or (t in ("integer", "number") and isinstance(v, bool)):
            return f"argument {k!r} must be a {t}, not {type(v).__name__}"
        if "enum" in p and v not in p["enum"]:
            return f"argument {k!r} must be one of {p['enum']}"
        if isinstance(v, str) and len(v) > p.get("maxLength", float("inf")):
            return f"argument {k!r} is longer than {p['maxLength']} characters"
    return None


class ToolRegistry:
    def __init__(self, tools: Iterable[Tool] = ()):
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.register(t)

    def register(self, tool: Tool) -> Tool:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is registered already")
        if tool.parameters.get("type") != "object":
            raise ValueError(f"tool {tool.name!r}: parameters must be a JSON schema of type 'object'")
        self._tools[tool.name] = tool
        return tool

    def __contains__(self, name: str) -> bool:
        return name in self._tools

    def __iter__(self):
        return iter(self._tools.values())

    def names(self) -> list[str]:
        return list(self._tools)

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise KeyError(f"unknown tool {name!r}; tools: {', '.join(self._tools)}") from None

    def specs(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The tool specs a system turn offers (`template.render(..., tools=specs)`)."""
        return [self.get(n).spec() for n in (self.names() if names is None else names)]

    def openai_specs(self, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
        return [{"type": "function", "function": s} for s in self.specs(names)]

    def call(self, name: str, arguments: Any = None) -> ToolResult:
        """Run tool `name` on `arguments` (a dict, or its JSON text). Model mistakes come back as
        a ToolResult with `error` set."""
        if name not in self._tools:
            return ToolResult(error=f"unknown tool {name!r}; tools: {', '.join(self._tools)}")
        tool = self._tools[name]
        if arguments is None:
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except ValueError as e:
                return ToolResult(error=f"{name}: arguments are not valid JSON ({e})")
        why = check_arguments(tool.parameters, arguments)
        if why is not None:
            return ToolResult(error=f"{name}: {why}; signature {tool.signature()}")
        out = tool.fn(**arguments)
        return out if isinstance(out, ToolResult) else ToolResult(str(out))

    def dispatch(self, call: Any) -> ToolResult:
        """Run a call as the model wrote it: {"name": ..., "arguments": {...}} (or a ToolCall, or
        the OpenAI shape {"function": {"name", "arguments"}})."""
        if hasattr(call, "name") and hasattr(call, "arguments"):  # adamba.data.chat.ToolCall
            return self.call(call.name, call.arguments)
        if isinstance(call, str):
            try:
                call = json.loads(call)
            except ValueError as e:
                return ToolResult(error=f"the tool call is not valid JSON ({e})")
        if not isinstance(call, dict):
            return ToolResult(error="a tool call must be an object with 'name' and 'arguments'")
        if isinstance(call.get("function"), dict):
            call = call["function"]
        name = call.get("name")
        if not isinstance(name, str):
            return ToolResult(error="the tool call has no 'name'")
        return self.call(name, call.get("arguments", {}))
