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

from tuneforge.data.issues import Issue
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


def sniff_tool_format(text: str) -> str:
    """The tool-call syntax an answer is written in, from its markers (for scoring answers of any model)."""
    if _MISTRAL_TAG in text:
        return "mistral"
    if "<tool_call>" in text:
        return "hermes"
    return "llama3" if text.lstrip().startswith(("{", _PYTHON_TAG)) else "hermes"


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


def tool_prompt(messages: list[Message], tools: list[dict] | None) -> dict:
    """A chat prompt that offers tools, as `models.generate.generate_batch` takes it (and renders it with
    `template_messages`): {"messages": [{role, content, tool_calls: [{name, arguments, id}], tool_call_id,
    name}], "tools": [...]}."""
    out = []
    for m in messages:
        d: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            d["tool_calls"] = [{"name": c.name, "arguments": c.arguments, "id": c.id} for c in m.tool_calls]
        d.update({k: v for k, v in (("tool_call_id", m.tool_call_id), ("name", m.name)) if v is not None})
        out.append(d)
    return {"messages": out, "tools": tools}


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


# --- reading (formats.py calls these; issues carry field paths, the caller stamps file:line) ---------------

_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")  # OpenAI's function names (written verbatim by templates)
_TOOLS_FIX = 'give "tools": [{"type": "function", "function": {"name", "description", "parameters"}}, ...]'


def read_tools(value: Any, path: str, issues: list[Issue]) -> list[dict] | None:
    """OpenAI's `tools` (or legacy `functions`, or LLaMA-Factory's bare function list, as a list or a JSON
    string) -> [{"type": "function", "function": {...}}]; None when absent."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            issues.append(Issue("invalid_tools", f"tools are not valid JSON ({exc.msg})", field=path, fix=_TOOLS_FIX))
            return None
    if isinstance(value, dict):
        value = [value]
    if value == []:  # LLaMA-Factory writes "[]" for records without tools
        return None
    if not isinstance(value, list):
        issues.append(Issue("invalid_tools", "tools must be a list of function schemas", field=path, fix=_TOOLS_FIX))
        return None
    out = []
    for i, tool in enumerate(value):
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else tool
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not _NAME.match(name):
            issues.append(Issue("invalid_tools", f"tool {i} has no valid 'name'", field=f"{path}[{i}]", fix=_TOOLS_FIX))
            continue
        params = function.get("parameters")
        if params is not None and not isinstance(params, dict):
            issues.append(
                Issue(
                    "invalid_tools", f"tool {name!r}: 'parameters' must be a JSON schema object", field=f"{path}[{i}]"
                )
            )
            continue
        out.append({"type": "function", "function": function})
    return out


def read_tool_calls(value: Any, path: str, issues: list[Issue]) -> list[ToolCall] | None:
    """An assistant's `tool_calls` (OpenAI: arguments a JSON string; HF / LLaMA-Factory: an object)."""
    if not isinstance(value, list) or not value:
        issues.append(Issue("wrong_type", "tool_calls must be a non-empty list of calls", field=path))
        return None
    calls = []
    for i, raw in enumerate(value):
        where = f"{path}[{i}]"
        function = raw.get("function", raw) if isinstance(raw, dict) else None
        if not isinstance(function, dict):
            issues.append(Issue("wrong_type", "a tool call must be an object with 'function'", field=where))
            continue
        call = read_call(function, f"{where}.function" if "function" in raw else where, issues)
        if call is not None:
            call_id = raw.get("id")
            calls.append(ToolCall(call.name, call.arguments, str(call_id) if call_id is not None else None))
    return calls if len(calls) == len(value) else None


def read_call(function: dict, path: str, issues: list[Issue]) -> ToolCall | None:
    """{"name", "arguments": JSON string | object} -> a ToolCall; bad JSON is a located error, never dropped."""
    name, args = function.get("name"), function.get("arguments", function.get("parameters"))
    if not isinstance(name, str) or not _NAME.match(name):
        issues.append(Issue("wrong_type", f"the call's name {name!r} is not a function name", field=f"{path}.name"))
        return None
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as exc:
            issues.append(
                Issue(
                    "invalid_arguments",
                    f"arguments of {name!r} are not valid JSON ({exc.msg} at character {exc.pos}): {args[:60]!r}",
                    field=f"{path}.arguments",
                    fix='write the arguments as a JSON object, e.g. "{\\"city\\": \\"Paris\\"}"',
                )
            )
            return None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        issues.append(
            Issue(
                "invalid_arguments",
                f"arguments of {name!r} must be a JSON object, got {type(args).__name__}",
                field=f"{path}.arguments",
                fix="give the arguments as an object of parameter names and values",
            )
        )
        return None
    return ToolCall(name, args)


def sharegpt_calls(value: Any, path: str, issues: list[Issue]) -> list[dict] | None:
    """A ShareGPT `function_call` turn's value (a JSON object or list of {"name", "arguments"}, as a string
    or already parsed) -> tool_calls in OpenAI's layout for the message reader."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            issues.append(
                Issue(
                    "invalid_arguments",
                    f"the function_call turn is not valid JSON ({exc.msg} at character {exc.pos}): {value[:60]!r}",
                    field=path,
                    fix='write {"name": "...", "arguments": {...}} (or a list of them)',
                )
            )
            return None
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, dict) for v in items):
        issues.append(Issue("wrong_type", "a function_call turn holds {name, arguments} object(s)", field=path))
        return None
    return [{"type": "function", "function": v} for v in items]


def check_tool_use(
    messages: list[Message], tools: list[dict] | None, parallel: bool | None, path: str, issues: list[Issue]
) -> None:
    """Every call names an offered tool; every result answers a pending call (by tool_call_id, else the next
    unanswered one, whose name it takes); every call is answered before the conversation moves on."""
    names = {t["function"]["name"] for t in tools or []}
    pending: list[tuple[int, ToolCall]] = []
    for i, m in enumerate(messages):
        where = f"{path}[{i}]"
        if m.role != "tool" and pending and (m.tool_calls or m.role in ("user", "assistant")):
            k, call = pending[0]
            issues.append(
                Issue(
                    "unanswered_tool_call",
                    f"the call to {call.name!r} in {path}[{k}] has no tool result before {where} ({m.role})",
                    field=f"{path}[{k}].tool_calls",
                    fix="add the tool message with its result right after the call",
                )
            )
            pending = []
        if m.tool_calls:
            if parallel is False and len(m.tool_calls) > 1:
                issues.append(
                    Issue(
                        "parallel_tool_calls",
                        f"{len(m.tool_calls)} calls in one message but parallel_tool_calls is false",
                        field=f"{where}.tool_calls",
                        fix="split the calls into turns or set parallel_tool_calls: true",
                    )
                )
            for j, call in enumerate(m.tool_calls):
                if call.name not in names:
                    offered = ", ".join(sorted(names)) or "none: the record has no tools"
                    issues.append(
                        Issue(
                            "unknown_tool",
                            f"calls {call.name!r}, which is not among the record's tools ({offered})",
                            field=f"{where}.tool_calls[{j}]",
                            fix="add its schema to the record's tools, or fix the name",
                        )
                    )
            pending = [(i, c) for c in m.tool_calls]
        elif m.role == "tool":
            match = next((p for p in pending if m.tool_call_id is None or p[1].id == m.tool_call_id), None)
            if match is None:
                which = f"tool_call_id {m.tool_call_id!r}" if m.tool_call_id else "a result"
                issues.append(
                    Issue(
                        "orphan_tool_result",
                        f"{which} answers no pending tool call",
                        field=where,
                        fix="put each tool result right after the assistant message that calls it, with its id",
                    )
                )
                continue
            pending.remove(match)
            if m.name is not None and m.name != match[1].name:
                issues.append(
                    Issue(
                        "orphan_tool_result",
                        f"the result is named {m.name!r} but answers the call to {match[1].name!r}",
                        field=f"{where}.name",
                    )
                )
            m.name = m.name or match[1].name
            m.tool_call_id = m.tool_call_id or match[1].id
