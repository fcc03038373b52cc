"""The tool registry: JSON-schema specs for the system turn, dispatch of a model's call, and
model mistakes coming back as tool errors rather than exceptions."""

import json

import pytest

from adamba.data.chat import ToolCall
from adamba.data.template import tools_text
from adamba.tools import Tool, ToolRegistry, ToolResult, check_arguments, default_registry


def echo_registry() -> ToolRegistry:
    return ToolRegistry(
        [
            Tool(
                "echo",
                "Repeat a text n times.",
                {
                    "type": "object",
                    "properties": {"text": {"type": "string", "maxLength": 10}, "n": {"type": "integer"}},
                    "required": ["text"],
                    "additionalProperties": False,
                },
                lambda text, n=1: text * n,
            )
        ]
    )


def test_specs_are_what_the_system_turn_lists():
    tools = default_registry()
    assert tools.names() == ["calculator", "python"]
    specs = tools.specs()
    for s in specs:
        assert set(s) == {"name", "description", "parameters"}
        assert s["parameters"]["type"] == "object" and s["parameters"]["required"]
    text = tools_text(specs)
    assert [json.loads(line)["name"] for line in text.splitlines()[1:]] == ["calculator", "python"]
    assert tools.openai_specs(["calculator"]) == [{"type": "function", "function": specs[0]}]
    assert tools.get("calculator").signature() == "calculator(expression: string)"
    assert echo_registry().get("echo").signature() == "echo(text: string, n: integer?)"


def test_dispatch_shapes():
    tools = default_registry()
    want = ToolResult("99")
    assert tools.dispatch({"name": "calculator", "arguments": {"expression": "(17*23+5)/4"}}) == want
    assert tools.dispatch(ToolCall("calculator", {"expression": "(17*23+5)/4"}, "call_0")) == want
    assert tools.dispatch('{"name": "calculator", "arguments": {"expression": "(17*23+5)/4"}}') == want
    openai = {"type": "function", "function": {"name": "calculator", "arguments": '{"expression": "396/4"}'}}
    assert tools.dispatch(openai) == want
    assert echo_registry().call("echo", {"text": "ab", "n": 3}).text() == "ababab"


@pytest.mark.parametrize(
    "call, why",
    [
        ({"name": "rm", "arguments": {}}, "unknown tool 'rm'; tools: echo"),
        ({"arguments": {}}, "no 'name'"),
        ("{not json", "not valid JSON"),
        (["echo"], "must be an object"),
        ({"name": "echo", "arguments": "{bad"}, "not valid JSON"),
        ({"name": "echo", "arguments": {}}, "missing argument 'text'"),
        ({"name": "echo", "arguments": {"text": 3}}, "'text' must be a string"),
        ({"name": "echo", "arguments": {"text": "a", "n": True}}, "'n' must be a integer"),
        ({"name": "echo", "arguments": {"text": "a", "rm": 1}}, "unknown argument 'rm'"),
        ({"name": "echo", "arguments": {"text": "a" * 11}}, "longer than 10"),
        ({"name": "echo", "arguments": [1]}, "must be a JSON object"),
    ],
)
def test_model_mistakes_are_tool_errors(call, why):
    res = echo_registry().dispatch(call)
    assert not res.ok and why in res.error, res.error
    assert res.text() == f"error: {res.error}"


def test_tool_errors_read_as_one_message():
    res = default_registry().call("calculator", {"expression": "1/0"})
    assert res.error == "calculator: division by zero" and res.text() == "error: calculator: division by zero"
    assert ToolResult("partial\n", "stopped").text() == "partial\nerror: stopped"
    assert check_arguments({"type": "object", "properties": {"x": {"type": "number"}}}, {"x": 1.5}) is None


def test_registry_refuses_bad_tools():
    reg = echo_registry()
    with pytest.raises(ValueError, match="registered already"):
        reg.register(reg.get("echo"))
    with pytest.raises(ValueError, match="type 'object'"):
        reg.register(Tool("bad", "", {"type": "string"}, str))
    with pytest.raises(KeyError, match="unknown tool"):
        reg.get("nope")
