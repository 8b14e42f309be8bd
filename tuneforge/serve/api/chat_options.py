"""OpenAI's chat/completions options beyond sampling, read from a request into the engine's terms and written
back in OpenAI's response shapes: logit_bias and penalties (`Controls`), logprobs, response_format (a grammar),
tools / tool_choice / parallel_tool_calls (rendered prompts, constrained calls, parsed tool_calls)."""

from __future__ import annotations

import json
from typing import Any

from tuneforge.serve.api.errors import APIError
from tuneforge.serve.ids import new_id


def logit_bias(raw: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias in -100..100} -> sorted (id, bias) pairs."""
    out = []
    for key, value in (raw or {}).items():
        if not (isinstance(key, str) and key.strip().isdigit()):
            raise APIError(400, f"logit_bias: keys are token ids as strings, got {key!r}.", param="logit_bias")
        if isinstance(value, bool) or not isinstance(value, int | float) or not -100 <= value <= 100:
            raise APIError(400, f"logit_bias[{key!r}]: the bias must be a number in -100..100.", param="logit_bias")
        out.append((int(key), float(value)))
    return tuple(sorted(out))


def response_grammar(fmt: Any):
    """response_format -> a Grammar (None for text). json_schema's schema is checked against the meta-schema."""
    from tuneforge.models.constrained import Grammar, GrammarError, validate_schema

    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar("json_object")
    if kind != "json_schema":
        raise APIError(
            400,
            "response_format.type must be 'text', 'json_object' or 'json_schema'.",
            param="response_format.type",
        )
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise APIError(
            400, "response_format.json_schema needs a 'name' and a 'schema'.", param="response_format.json_schema"
        )
    if not isinstance(schema, dict):
        raise APIError(
            400, "response_format.json_schema.schema must be a JSON schema object.", param="response_format.json_schema"
        )
    try:
        validate_schema(schema)
    except GrammarError as exc:
        raise APIError(
            400, f"response_format.json_schema.schema is {exc}", param="response_format.json_schema"
        ) from None
    return Grammar("json_schema", json.dumps(schema, sort_keys=True))


def read_tools(body) -> tuple[list[dict] | None, str | dict]:
    """The request's tools (OpenAI's layout, checked) and its tool_choice ("none" when no tools)."""
    from tuneforge.data.tool_calls import read_tools as read

    issues: list = []
    tools = read(body.tools, "tools", issues)
    if issues:
        raise APIError(400, f"{issues[0].field}: {issues[0].message}.", param=issues[0].field)
    choice = body.tool_choice
    if choice is None:
        return tools, "auto" if tools else "none"
    if not tools:
        raise APIError(400, "tool_choice needs 'tools' to choose from.", param="tool_choice")
    if choice in ("none", "auto", "required"):
        return tools, choice
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(name, str)):
        raise APIError(
            400,
            'tool_choice must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}.',
            param="tool_choice",
        )
    if name not in {t["function"]["name"] for t in tools}:
        raise APIError(400, f"tool_choice names {name!r}, which is not among the tools.", param="tool_choice")
    return tools, choice


def call_grammar(tools: list[dict], choice: str | dict):
    """tool_choice required / a named function: the answer must be one call of an offered function (of that
    one), its arguments valid against the function's parameters. The text around the call's JSON is the
    template's (hermes <tool_call> tags, llama3's bare JSON): the engine picks it with the tokenizer."""
    from tuneforge.models.constrained import Grammar

    if choice in ("none", "auto"):
        return None
    offered = [t["function"] for t in tools]
    if isinstance(choice, dict):
        offered = [f for f in offered if f["name"] == choice["function"]["name"]]
    spec = [{"name": f["name"], "parameters": f.get("parameters") or {"type": "object"}} for f in offered]
    return Grammar("tool_call", json.dumps(spec, sort_keys=True))


def request_messages(raw: list[dict[str, Any]], text_of) -> list[dict[str, Any]]:
    """Messages that may carry tool calls (assistant) and results (tool): role, content, and the call fields
    in the layout `tuneforge.models.generate.encode_chat` reads."""
    out = []
    for i, m in enumerate(raw):
        calls = m.get("tool_calls") if m.get("role") == "assistant" else None
        content = m.get("content")
        if calls is None:
            out.append(text_of(i, m))
            continue
        if not isinstance(calls, list) or not calls:
            raise APIError(400, f"messages[{i}].tool_calls must be a list of calls.", param=f"messages[{i}].tool_calls")
        parsed = []
        for k, call in enumerate(calls):
            where = f"messages[{i}].tool_calls[{k}]"
            fn = call.get("function") if isinstance(call, dict) else None
            try:
                args = json.loads(fn["arguments"]) if isinstance(fn["arguments"], str) else fn["arguments"]
            except (TypeError, KeyError, json.JSONDecodeError):
                raise APIError(
                    400, f"{where}.function needs a 'name' and JSON 'arguments'.", param=f"{where}.function"
                ) from None
            if not isinstance(fn.get("name"), str) or not isinstance(args, dict):
                raise APIError(400, f"{where}.function: arguments must be a JSON object.", param=f"{where}.function")
            parsed.append({"name": fn["name"], "arguments": args, "id": call.get("id")})
        text = text_of(i, {**m, "content": content or ""})["content"]
        out.append({"role": "assistant", "content": text, "tool_calls": parsed})
    return out


def tool_calls_out(calls: list) -> list[dict]:
    """Parsed ToolCalls -> OpenAI's message.tool_calls (arguments as a JSON string, ids of our own)."""
    return [
        {
            "id": c.id or new_id("call_"),
            "type": "function",
            "function": {"name": c.name, "arguments": json.dumps(c.arguments, ensure_ascii=False)},
        }
        for c in calls
    ]


def chat_logprobs(entries: list | None) -> dict | None:
    """TokenLogprobs -> OpenAI's chat `logprobs` ({"content": [...], "refusal": None})."""
    if entries is None:
        return None

    def one(raw: bytes, logprob: float) -> dict:
        return {"token": _spelled(raw), "logprob": logprob, "bytes": list(raw)}

    content = [{**one(e.bytes, e.logprob), "top_logprobs": [one(b, lp) for _, lp, b in e.top]} for e in entries]
    return {"content": content, "refusal": None}


def completion_logprobs(entries: list | None, offset: int = 0) -> dict | None:
    """TokenLogprobs -> the legacy completions `logprobs` (tokens, token_logprobs, top_logprobs, text_offset)."""
    if entries is None:
        return None
    tokens, offsets = [], []
    for e in entries:
        offsets.append(offset)
        tokens.append(_spelled(e.bytes))
        offset += len(tokens[-1])
    return {
        "tokens": tokens,
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{_spelled(b): lp for _, lp, b in e.top} for e in entries],
        "text_offset": offsets,
    }


def _spelled(raw: bytes) -> str:
    """A token's text; the bytes of half a character written as \\xNN, as OpenAI writes them."""
    return raw.decode("utf-8", "backslashreplace")
