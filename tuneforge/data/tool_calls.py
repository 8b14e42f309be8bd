"""Tool (function) calling: how tools and tool calls are rendered for a chat template, and parsed back.

Rendering. A conversation with tools is rendered by the model's own chat template when the template
supports tools (its source uses both `tools` and `tool_calls`: Llama 3.1, Qwen 2.5 / Qwen 3, Mistral v3,
tuneforge's built-in chatml): `apply_chat_template(messages, tools=...)` with HF's message layout
(assistant `tool_calls: [{"type": "function", "id", "function": {"name", "arguments": {...}}}]`, results as
role `tool` with `tool_call_id` and `name`). A template without tool support gets the documented fallback,
plain messages any template renders (Hermes / Qwen 2.5 style):
  - the tools are listed in the system prompt (`TOOLS_PROMPT`, one JSON schema per line inside <tools>);
  - an assistant's calls are written in its content, one `<tool_call>\\n{"name": ..., "arguments": {...}}\\n
    </tool_call>` per call, after its text;
  - tool results become one user message of `<tool_response>\\n...\\n</tool_response>` blocks.

Parsing. `parse_tool_calls(text, template)` reads a model's answer back into (content, calls) for the
syntax the template writes (`tool_format`): hermes `<tool_call>` blocks (Qwen, Hermes, the fallback),
llama3 JSON `{"name", "parameters"}` (optionally after <|python_tag|>), mistral `[TOOL_CALLS] [...]`. Text
that looks like a call but does not parse is returned whole as content, with the reason: nothing is lost.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tuneforge.data.types import Message, ToolCall

TOOL_FORMATS = ("hermes", "llama3", "mistral")
TOOLS_PROMPT = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, "arguments": <args-json-object>}}\n'
    "</tool_call>"
)  # Qwen 2.5's wording, so a Qwen-style model reads the fallback as it was trained to
_HERMES = re.compile(r"<tool_call>(.*?)(</tool_call>|\Z)", re.DOTALL)
_PYTHON_TAG = "<|python_tag|>"
_MISTRAL_TAG = "[TOOL_CALLS]"


@dataclass(frozen=True)
class ParsedToolCalls:
    """What a model answered: its text (None when it only called tools) and its calls. Unpacks as the pair
    `content, calls = parse_tool_calls(...)`; `reason` says why text that looked like a call stayed content."""

    content: str | None
    calls: list[ToolCall] = field(default_factory=list)
    reason: str | None = None

    def __iter__(self):
        return iter((self.content, self.calls))


def tool_format(template: str | None) -> str:
    """The tool-call syntax of a chat template (its jinja source), or `template` itself if it names one.
    Templates without tool support use the fallback, which is hermes."""
    if template in TOOL_FORMATS:
        return template
    text = template or ""
    if _MISTRAL_TAG in text:
        return "mistral"
    if "ipython" in text and '"parameters": ' in text:
        return "llama3"
    return "hermes"


def supports_tools(template: str | None) -> bool:
    """Whether a chat template renders tools itself (else the fallback is used)."""
    return isinstance(template, str) and "tools" in template and "tool_calls" in template


def parse_tool_calls(text: str, template: str | None) -> ParsedToolCalls:
    """A generated answer -> (content or None, [ToolCall]) for the syntax `template` writes.

    `template` is the chat template's jinja source (`tokenizer.chat_template`) or a format name from
    TOOL_FORMATS. Content is the text around the calls, stripped; None when only calls remain. An answer
    without calls is returned as it is. A call that does not parse (bad JSON, no name, arguments that are
    not an object, an unclosed block) leaves the whole text as content with no calls and `reason` set.
    Ids are the ones the text carries (mistral), else None: the caller assigns its own.
    """
    fmt = tool_format(template)
    try:
        if fmt == "mistral":
            return _parse_mistral(text)
        if fmt == "llama3":
            return _parse_llama3(text)
        return _parse_hermes(text)
    except _Unparsable as exc:
        return ParsedToolCalls(text, [], str(exc))


class _Unparsable(ValueError):
    pass


def _parse_hermes(text: str) -> ParsedToolCalls:
    blocks = list(_HERMES.finditer(text))
    if not blocks:
        return ParsedToolCalls(text)
    calls = []
    for k, block in enumerate(blocks, 1):
        if not block.group(2):
            raise _Unparsable(f"tool call {k}: <tool_call> is not closed by </tool_call>")
        calls.append(_call(_json(block.group(1), k), k, "arguments"))
    content = _HERMES.sub("", text).strip()
    return ParsedToolCalls(content or None, calls)


def _parse_llama3(text: str) -> ParsedToolCalls:
    body = text.strip().removeprefix(_PYTHON_TAG).strip()
    if not body.startswith("{"):
        return ParsedToolCalls(text)
    decoder, calls, pos = json.JSONDecoder(), [], 0
    while pos < len(body):  # one call, or several separated by ';' (Llama 3.1's parallel form)
        try:
            value, end = decoder.raw_decode(body, pos)
        except json.JSONDecodeError as exc:
            if not calls and '"name"' not in body:
                return ParsedToolCalls(text)  # an answer that merely starts with a brace
            raise _Unparsable(f"tool call {len(calls) + 1}: invalid JSON ({exc.msg} at character {exc.pos})") from None
        if not calls and not (isinstance(value, dict) and "name" in value):
            return ParsedToolCalls(text)  # JSON, but not a call: the answer is the JSON
        calls.append(_call(value, len(calls) + 1, "parameters" if "parameters" in value else "arguments"))
        pos = end
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
    return ParsedToolCalls(None, calls)


def _parse_mistral(text: str) -> ParsedToolCalls:
    at = text.find(_MISTRAL_TAG)
    if at < 0:
        return ParsedToolCalls(text)
    content, rest = text[:at].strip(), text[at + len(_MISTRAL_TAG) :].strip()
    try:
        value, end = json.JSONDecoder().raw_decode(rest)
    except json.JSONDecodeError as exc:
        raise _Unparsable(f"[TOOL_CALLS]: invalid JSON ({exc.msg} at character {exc.pos})") from None
    if rest[end:].strip():
        raise _Unparsable(f"[TOOL_CALLS]: text after the list of calls: {rest[end:].strip()[:40]!r}")
    items = value if isinstance(value, list) else [value]
    calls = [_call(v, k, "arguments") for k, v in enumerate(items, 1)]
    return ParsedToolCalls(content or None, calls)


def _json(text: str, k: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Unparsable(f"tool call {k}: invalid JSON ({exc.msg} at character {exc.pos})") from None


def _call(value: Any, k: int, key: str) -> ToolCall:
    if not isinstance(value, dict) or not isinstance(value.get("name"), str) or not value["name"]:
        raise _Unparsable(f"tool call {k}: not an object with a 'name'")
    args = value.get(key, value.get("arguments", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string, as OpenAI's API does
        args = _json(args, k)
    if not isinstance(args, dict):
        raise _Unparsable(f"tool call {k}: '{key}' must be a JSON object, got {type(args).__name__}")
    call_id = value.get("id")
    return ToolCall(value["name"], args, call_id if isinstance(call_id, str) else None)


# --- rendering -------------------------------------------------------------------------------------------


def has_tools(messages: list[Message], tools: list[dict] | None) -> bool:
    return bool(tools) or any(m.tool_calls or m.role == "tool" for m in messages)


def template_messages(
    messages: list[Message], tools: list[dict] | None, chat_template: str | None
) -> tuple[list[dict], list[dict] | None]:
    """The messages (and tools) to give `apply_chat_template`: HF's tool layout when the template supports
    tools, else the fallback's plain messages and no tools. A conversation without tools is unchanged."""
    if not has_tools(messages, tools):
        return [{"role": m.role, "content": m.content} for m in messages], None
    if supports_tools(chat_template):
        return [_hf_message(m) for m in messages], tools or None
    return fallback_messages(messages, tools), None


def _hf_message(m: Message) -> dict:
    d: dict[str, Any] = {"role": m.role, "content": m.content}
    if m.tool_calls:
        d["tool_calls"] = [
            {
                "type": "function",
                **({"id": c.id} if c.id else {}),
                "function": {"name": c.name, "arguments": c.arguments},
            }
            for c in m.tool_calls
        ]
    if m.role == "tool":
        d.update({k: v for k, v in (("tool_call_id", m.tool_call_id), ("name", m.name)) if v is not None})
    return d


def render_call(call: ToolCall) -> str:
    """One call in the fallback (hermes) syntax."""
    body = json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def tools_prompt(tools: list[dict]) -> str:
    return TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False) for t in tools))


def fallback_messages(messages: list[Message], tools: list[dict] | None) -> list[dict]:
    """Tools in the system prompt, calls in the assistant's content, results as user turns (see the module)."""
    out: list[dict] = []
    for m in messages:
        if m.role == "tool":
            block = f"<tool_response>\n{m.content}\n</tool_response>"
            if out and out[-1].get("_results"):  # parallel results: one user turn, as Qwen's template writes them
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_results": True})
        elif m.tool_calls:
            calls = "\n".join(render_call(c) for c in m.tool_calls)
            out.append({"role": "assistant", "content": f"{m.content}\n{calls}" if m.content else calls})
        else:
            out.append({"role": m.role, "content": m.content})
    if tools:
        prompt = tools_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return [{k: v for k, v in m.items() if k != "_results"} for m in out]


def same_calls(a: list[ToolCall], b: list[ToolCall]) -> bool:
    """Same functions with the same arguments as parsed JSON, in order (ids aside)."""
    return [(c.name, c.arguments) for c in a] == [(c.name, c.arguments) for c in b]
