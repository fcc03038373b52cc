"""Chat schema: Glaive, ShareGPT, ToolBench and OpenAI records parse into one message schema."""

from __future__ import annotations

import json

import pytest

from adamba.data.chat import (
    ChatFormatError,
    ChatStats,
    Conversation,
    Message,
    ToolCall,
    conversation_document,
    loads_lenient,
    parse_glaive,
    parse_records,
    parse_sharegpt,
    parse_toolbench,
)

GLAIVE_SYSTEM = (
    "SYSTEM: You are a helpful assistant with access to the following functions. Use them if required -\n"
    '{\n    "name": "get_movie_details",\n    "description": "Get details of a movie",\n'
    '    "parameters": {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}\n}\n\n'
    '{"name": "convert_currency", "parameters": {"type": "object", "properties": {}}}\n'
)
GLAIVE_CHAT = (
    "USER: What do you know about Ocean's Eleven?\n\n\n"
    'ASSISTANT: <functioncall> {"name": "get_movie_details", "arguments": \'{"title": "Ocean\'s Eleven"}\'} <|endoftext|>\n\n\n'
    'FUNCTION RESPONSE: {"year": 2001, "director": "Steven Soderbergh"}\n\n\n'
    "ASSISTANT: It is a 2001 film by Steven Soderbergh. <|endoftext|>\n\n\n"
    "USER: Convert 10 USD to EUR\n\n\n"
    "ASSISTANT: Sure. <functioncall> {\"name\": \"convert_currency\", \"arguments\": {'amount': 10, 'from': 'USD', 'flag': True}} <|endoftext|>\n\n\n"
    'FUNCTION RESPONSE: {"converted": 9.2}\n\n\n'
    "ASSISTANT: 10 USD is 9.20 EUR. <|endoftext|>\n"
)


def test_glaive_function_calls_and_results():
    conv = parse_glaive({"system": GLAIVE_SYSTEM, "chat": GLAIVE_CHAT})
    roles = [m.role for m in conv.messages]
    assert roles == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    assert conv.messages[0].content.startswith("You are a helpful assistant")
    assert [t["name"] for t in conv.tools] == ["get_movie_details", "convert_currency"]
    call = conv.messages[2].tool_calls[0]
    # single-quoted JSON arguments, with an apostrophe inside
    assert (call.name, call.arguments) == ("get_movie_details", {"title": "Ocean's Eleven"})
    assert conv.messages[2].content == ""
    tool = conv.messages[3]
    assert (tool.tool_call_id, tool.name) == (call.id, "get_movie_details")
    assert json.loads(tool.content)["year"] == 2001
    # python-literal arguments (single quotes, True), with text before the call
    second = conv.messages[6]
    assert second.content == "Sure."
    assert second.tool_calls[0].arguments == {"amount": 10, "from": "USD", "flag": True}
    assert conv.messages[7].tool_call_id == second.tool_calls[0].id != call.id
    assert "<|endoftext|>" not in conv.to_text()


def test_glaive_without_functions():
    conv = parse_glaive(
        {
            "system": "SYSTEM: You are a helpful assistant, with no access to external functions.",
            "chat": "USER: Hi\n\n\nASSISTANT: Hello! <|endoftext|>\n",
        }
    )
    assert conv.tools == [] and [m.role for m in conv.messages] == ["system", "user", "assistant"]


@pytest.mark.parametrize(
    "record, reason",
    [
        (
            {"system": "", "chat": 'ASSISTANT: <functioncall> {"name": "f", "arguments": \'{broken\'} \n'},
            "unparseable arguments",
        ),
        ({"system": "", "chat": "USER: hi\n\nFUNCTION RESPONSE: {}\n"}, "tool result without a tool call"),
        ({"system": "", "chat": "USER: only a question\n"}, "no assistant message"),
        ({"system": "", "chat": 42}, "glaive record needs"),
        ({"system": 'SYSTEM: {"name": ', "chat": "USER: a\nASSISTANT: b"}, "unparseable function spec"),
        ({"system": "", "chat": "hello USER: a\nASSISTANT: b"}, "text before the first turn"),
    ],
)
def test_glaive_malformed(record, reason):
    with pytest.raises(ChatFormatError, match=reason):
        parse_glaive(record)


def test_sharegpt_turns_and_roles():
    rec = {
        "id": "abc",
        "conversations": [
            {"from": "system", "value": "Be brief."},
            {"from": "human", "value": "Name a prime."},
            {"from": "gpt", "value": " 7 "},
            {"from": "human", "value": "Another?"},
            {"from": "chatgpt", "value": "11"},
        ],
    }
    conv = parse_sharegpt(rec)
    assert conv.id == "abc"
    assert [(m.role, m.content) for m in conv.messages] == [
        ("system", "Be brief."),
        ("user", "Name a prime."),
        ("assistant", "7"),
        ("user", "Another?"),
        ("assistant", "11"),
    ]


def test_sharegpt_function_call_observation_and_openai_tool_calls():
    rec = {
        "conversations": [
            {"from": "human", "value": "weather in Paris?"},
            {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Paris"}}'},
            {"from": "observation", "value": '{"temp": 21}'},
            {"from": "gpt", "value": "21 degrees."},
        ],
        "tools": '[{"name": "weather", "parameters": {}}]',
    }
    conv = parse_sharegpt(rec)
    assert conv.messages[1].tool_calls[0].arguments == {"city": "Paris"}
    assert conv.messages[2].role == "tool" and conv.messages[2].name == "weather"
    assert conv.tools == [{"name": "weather", "parameters": {}}]

    openai = {
        "messages": [
            {"role": "user", "content": "2+3?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "c9",
                        "type": "function",
                        "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "c9", "content": "5"},
            {"role": "assistant", "content": "5"},
        ]
    }
    conv = parse_sharegpt(openai)
    assert conv.messages[1].tool_calls == [ToolCall("add", {"a": 2, "b": 3}, "c9")]
    assert conv.messages[2].tool_call_id == "c9" and conv.messages[2].name == "add"


def test_toolbench_react_actions_become_tool_calls():
    rec = {
        "id": "tb1",
        "conversations": [
            {"from": "system", "value": "You can use tools: search_for_x ..."},
            {"from": "user", "value": "Find X"},
            {
                "from": "assistant",
                "value": '\nThought: I should search.\nAction: search_for_x\nAction Input: {"q": "X"}',
            },
            {"from": "function", "value": '{"error": "", "response": "found"}'},
            {
                "from": "assistant",
                "value": 'Thought: done\nAction: Finish\nAction Input: {\n  "return_type": "give_answer",\n  "final_answer": "X is found"\n}',
            },
        ],
    }
    conv = parse_toolbench(rec)
    a = conv.messages[2]
    assert a.content == "Thought: I should search." and a.tool_calls[0].name == "search_for_x"
    assert a.tool_calls[0].arguments == {"q": "X"}
    assert conv.messages[3].role == "tool" and conv.messages[3].name == "search_for_x"
    assert conv.messages[4].tool_calls[0].arguments["final_answer"] == "X is found"


@pytest.mark.parametrize(
    "turns, reason",
    [
        ([{"from": "human", "value": "hi"}, {"from": "alien", "value": "?"}], "unknown speaker"),
        ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": None}], "turn without text"),
        (
            [{"from": "gpt", "value": "I start"}, {"from": "human", "value": "hi"}],
            "does not start with a user",
        ),
        ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "  "}], "empty assistant message"),
        (
            [
                {"from": "human", "value": "a"},
                {"from": "system", "value": "late"},
                {"from": "gpt", "value": "b"},
            ],
            "system message not first",
        ),
        (
            [
                {"from": "human", "value": "a"},
                {"from": "observation", "value": "{}"},
                {"from": "gpt", "value": "b"},
            ],
            "tool result without",
        ),
        ("not a list", "no 'conversations'"),
    ],
)
def test_sharegpt_malformed(turns, reason):
    with pytest.raises(ChatFormatError, match=reason):
        parse_sharegpt({"conversations": turns})


def test_parse_records_counts_and_skips():
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    records = [
        good,
        {"conversations": []},
        "nonsense",
        {"conversations": [{"from": "x", "value": "y"}]},
        good,
    ]
    stats = ChatStats()
    convs = list(parse_records(records, parse_sharegpt, stats, source="test"))
    assert len(convs) == 2 and stats.parsed == 2 and stats.skipped == 3
    assert stats.reasons == {"no messages": 1, "record is not an object": 1, "unknown speaker": 1}
    assert convs[0].id == "0" and convs[1].id == "4" and convs[0].source == "test"


def test_roundtrip_dict_and_document():
    conv = parse_glaive({"system": GLAIVE_SYSTEM, "chat": GLAIVE_CHAT})
    again = Conversation.from_dict(json.loads(json.dumps(conv.to_dict())))
    assert again == conv
    doc = conversation_document(conv)
    assert doc.text == conv.to_text() and doc.meta["tools"] == conv.tools
    assert doc.meta["messages"][2]["tool_calls"][0]["name"] == "get_movie_details"


def test_validate_rejects_tool_calls_on_user_and_loads_lenient():
    conv = Conversation([Message("user", "x", [ToolCall("f", {})]), Message("assistant", "y")])
    with pytest.raises(ChatFormatError, match="tool calls outside an assistant"):
        conv.validate()
    assert loads_lenient("{'a': None}") == {"a": None}
    with pytest.raises(ChatFormatError):
        loads_lenient("{'a': ")
