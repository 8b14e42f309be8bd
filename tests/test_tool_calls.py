"""Tool calling: the parser for each syntax tuneforge renders, readers of OpenAI's and ShareGPT's layouts,
the rendering with the model's own template (or the fallback), the labels, and the eval metric."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.data import formats
from tuneforge.data.readers import iter_checked, read_examples
from tuneforge.data.tool_calls import (
    ParsedToolCalls,
    fallback_messages,
    parse_tool_calls,
    render_call,
    tool_format,
)
from tuneforge.data.types import Message, ToolCall
from tuneforge.errors import DataError

WEATHER = ToolCall("get_weather", {"city": "Paris", "unit": "celsius"})


# --- parser -----------------------------------------------------------------------------------------------


def test_hermes_calls_and_content():
    call = '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}'
    text = f"Let me check.\n<tool_call>\n{call}\n</tool_call>"
    content, calls = parse_tool_calls(text, "hermes")
    assert content == "Let me check."
    assert calls == [WEATHER]
    two = render_call(WEATHER) + "\n" + render_call(ToolCall("get_time", {"tz": "CET"}))
    parsed = parse_tool_calls(two, "hermes")
    assert parsed.content is None and [c.name for c in parsed.calls] == ["get_weather", "get_time"]
    assert parsed.reason is None


def test_plain_answer_is_content():
    assert tuple(parse_tool_calls("It is sunny.", "hermes")) == ("It is sunny.", [])
    assert tuple(parse_tool_calls("{braces} are fine", "llama3")) == ("{braces} are fine", [])
    assert tuple(parse_tool_calls('{"answer": 4}', "llama3")) == ('{"answer": 4}', [])


@pytest.mark.parametrize(
    "text, fmt, reason",
    [
        ('<tool_call>\n{"name": "get_weather", "arguments": {"city": }\n</tool_call>', "hermes", "invalid JSON"),
        ('<tool_call>\n{"name": "get_weather", "arguments": {}}', "hermes", "not closed"),
        ('<tool_call>\n{"arguments": {}}\n</tool_call>', "hermes", "'name'"),
        ('<tool_call>\n{"name": "f", "arguments": [1]}\n</tool_call>', "hermes", "JSON object"),
        ('{"name": "get_weather", "parameters": {"city": "Par', "llama3", "invalid JSON"),
        ('[TOOL_CALLS] [{"name": "f", "arguments": {]', "mistral", "invalid JSON"),
    ],
)
def test_bad_calls_stay_content_with_a_reason(text, fmt, reason):
    parsed = parse_tool_calls(text, fmt)
    assert parsed.content == text and parsed.calls == []
    assert reason in parsed.reason


def test_llama3_and_mistral_syntax():
    content, calls = parse_tool_calls(
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "unit": "celsius"}}', "llama3"
    )
    assert content is None and calls == [WEATHER]
    _, calls = parse_tool_calls('{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}', "llama3")
    assert [(c.name, c.arguments) for c in calls] == [("a", {}), ("b", {"x": 1})]
    parsed = parse_tool_calls(
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}, "id": "abc123xyz"}]',
        "mistral",
    )
    assert parsed.content is None and parsed.calls == [ToolCall("get_weather", WEATHER.arguments, "abc123xyz")]
    assert parse_tool_calls('<tool_call>\n{"name": "f", "arguments": "{\\"a\\": 1}"}\n</tool_call>', "hermes").calls[
        0
    ].arguments == {"a": 1}


def test_format_from_template_source():
    from tests.tool_templates import LLAMA31_TOOLS, QWEN25_TOOLS

    assert tool_format(QWEN25_TOOLS) == "hermes"
    assert tool_format(LLAMA31_TOOLS) == "llama3"
    assert tool_format("{{ '[TOOL_CALLS] ' }}") == "mistral"
    assert tool_format(None) == "hermes"  # the fallback


def test_fallback_round_trip():
    """What the fallback renders for an assistant turn parses back into the same calls."""
    msgs = [
        Message("user", "Weather in Paris and the time?"),
        Message("assistant", "Checking.", tool_calls=[WEATHER, ToolCall("get_time", {"tz": "CET"})]),
        Message("tool", '{"temp": 21}', tool_call_id="1"),
        Message("tool", '{"time": "10:00"}', tool_call_id="2"),
        Message("assistant", "21 degrees at 10:00."),
    ]
    out = fallback_messages(msgs, [{"type": "function", "function": {"name": "get_weather"}}])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user", "assistant"]
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"}}\n</tools>' in out[0]["content"]
    assert (
        out[3]["content"]
        == '<tool_response>\n{"temp": 21}\n</tool_response>\n<tool_response>\n{"time": "10:00"}\n</tool_response>'
    )
    parsed = parse_tool_calls(out[2]["content"], None)
    assert isinstance(parsed, ParsedToolCalls) and parsed.content == "Checking." and parsed.calls == msgs[1].tool_calls


# --- readers ----------------------------------------------------------------------------------------------

CORPUS = Path(__file__).parent / "data_corpus" / "tools"


def test_openai_tool_calls_read():
    convs = read_examples(CORPUS / "openai_tools.jsonl")
    assert len(convs) == 3
    first = convs[0]
    assert first.messages[1].content == "" and first.messages[1].tool_calls == [
        ToolCall("get_current_weather", {"location": "San Francisco, USA", "format": "celsius"}, "call_id")
    ]
    assert [t["function"]["name"] for t in first.tools] == ["get_current_weather"]
    exchange = convs[1]
    assert exchange.parallel_tool_calls is False
    result = exchange.messages[3]
    assert (result.role, result.tool_call_id, result.name) == ("tool", "call_1", "get_current_weather")
    parallel = convs[2].messages  # results answered by id, in another order than the calls
    assert [(m.tool_call_id, m.name) for m in parallel[2:4]] == [
        ("call_b", "get_local_time"),
        ("call_a", "get_current_weather"),
    ]
    again = formats.parse(json.loads(json.dumps(convs[2].to_dict())), "chat")[0]  # what prepare writes reads back
    assert again.messages == convs[2].messages and again.tools == convs[2].tools


def test_legacy_functions_read():
    (conv,) = read_examples(CORPUS / "openai_functions.jsonl")
    assert conv.messages[1].tool_calls == [
        ToolCall("get_current_weather", {"location": "Rome, Italy", "format": "celsius"})
    ]
    assert (conv.messages[2].role, conv.messages[2].name) == ("tool", "get_current_weather")
    assert conv.tools[0] == {
        "type": "function",
        "function": json.loads((CORPUS / "openai_functions.jsonl").read_text())["functions"][0],
    }


def test_glaive_toolcall_read():
    calls, plain = read_examples(CORPUS / "glaive_toolcall.json")
    assert [m.role for m in calls.messages] == ["user", "assistant", "tool", "assistant"]
    assert calls.messages[1].tool_calls == [ToolCall("generate_password", {"length": 12})]
    assert calls.messages[2].name == "generate_password"
    assert calls.tools[0]["type"] == "function" and calls.tools[0]["function"]["name"] == "generate_password"
    assert plain.tools is None  # "[]": no tools


@pytest.mark.parametrize(
    "name, expected",
    [
        (
            "bad_tools.jsonl",
            [
                (1, "invalid_arguments", "messages[1].tool_calls[0].function.arguments"),
                (2, "unknown_tool", "messages[1].tool_calls[0]"),
                (3, "orphan_tool_result", "messages[1]"),
                (4, "parallel_tool_calls", "messages[1].tool_calls"),
                (5, "unanswered_tool_call", "messages[1].tool_calls"),
            ],
        ),
        (
            "bad_glaive.json",
            [(2, "invalid_arguments", "conversations[1].value"), (23, "orphan_tool_result", "conversations[1]")],
        ),
    ],
)
def test_tool_mistakes_are_located_errors(name, expected):
    checked = [c for c in iter_checked(CORPUS / name) if c.errors]
    assert [(c.line, e.kind, e.field) for c in checked for e in c.errors] == expected
    assert all(c.example is None and e.fix for c in checked for e in c.errors)
    with pytest.raises(DataError, match=f"{len(expected)} invalid record"):
        read_examples(CORPUS / name)
