"""Record formats: one parsed record (a dict) -> one example of data/types.py, or issues.

Each parser checks everything it can about its record and returns all issues at once
(field paths like `messages[2].content`); file and line are stamped on by the caller.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tuneforge.data import tool_calls
from tuneforge.data.issues import Issue
from tuneforge.data.types import (
    ROLES,
    Conversation,
    Example,
    LabelledAnswer,
    LabelledExample,
    Message,
    PreferencePair,
    PromptExample,
    TextExample,
    TokenExample,
    ToolCall,
)

FORMATS = (
    "chat",
    "prompt_completion",
    "alpaca",
    "sharegpt",
    "text",
    "classification",
    "tokens",
    "preference",
    "kto",
    "rft",
)
ALIASES = {
    "reinforcement": "rft",
    "openai": "chat",
    "messages": "chat",
    "completion": "prompt_completion",
    "labelled": "classification",
    "labeled": "classification",
    "ner": "tokens",
    "dpo": "preference",
    "raw": "text",
}
SFT_FORMATS = ("chat", "prompt_completion", "alpaca", "sharegpt")
# Kinds of data refused by name (what, fix), never read as a neighbour format: data we cannot train on yet, and
# KTO data anywhere but the kto objective (read as SFT, its undesirable answers would become training targets).
REFUSED = {
    "kto_unsupported": (
        "KTO data (unpaired desirable/undesirable labels) trains only with objective kto",
        "set objective: kto (and --format kto or auto), or drop the records labelled false and the "
        "label column to train the desirable answers as SFT",
    ),
    "multimodal_unsupported": (
        "multimodal records (images, audio, video) are not supported yet",
        "remove the media columns, content parts and <image>/<audio>/<video> placeholders, or keep these records out",
    ),
}
_MEDIA_KEYS = ("images", "audios", "videos", "image", "audio", "video")
_MEDIA_PARTS = {
    "image",
    "image_url",
    "input_image",
    "audio",
    "input_audio",
    "audio_url",
    "video",
    "video_url",
    "file",
    "input_file",
}
_MEDIA_PLACEHOLDER = re.compile(r"<(image|audio|video)>")
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "bard": "assistant",
    "system": "system",
    "tool": "tool",
    "function": "tool",
    "observation": "tool",
    "function_call": "assistant",  # LLaMA-Factory: the value is the call's JSON
}
_MESSAGE_KEYS = {"role", "content", "weight", "loss_weight", "name", "tool_calls", "tool_call_id", "function_call"}
_BIO = re.compile(r"^(O|[BI]-\S+)$")

ParseResult = tuple["Example | None", list[Issue]]


def canonical_format(name: str) -> str:
    return ALIASES.get(name, name)


def detect(record: Any) -> str | None:
    """The format a record looks like, from its keys; None if it matches none."""
    if not isinstance(record, dict):
        return None
    keys = record.keys()
    if preference_layout(record) is not None:
        return "preference"
    if _kto_label(record) is not None:
        return "kto"
    if "messages" in keys:  # RFT prompts (messages ending in a user turn) are read as such under objective grpo
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if "tokens" in keys and keys & {"tags", "ner_tags"}:
        return "tokens"
    if {"text", "label"} <= keys:
        return "classification"
    if "text" in keys:
        return "text"
    return None


def preference_layout(record: dict) -> str | None:
    """Which preference layout a record uses (see `_PREFERENCE_FIELDS`), or None."""
    keys = record.keys()
    if {"input", "preferred_output", "non_preferred_output"} <= keys:
        return "openai"  # OpenAI's DPO fine-tuning format
    if {"chosen_messages", "rejected_messages"} <= keys:
        return "messages_pair"  # LLaMA-Factory v1: two whole conversations
    if not {"chosen", "rejected"} <= keys:
        return None
    for layout in ("prompt", "conversations", "messages", "instruction"):
        if layout in keys:
            return layout
    return "implicit"  # TRL's implicit prompt: two whole conversations sharing a prefix


def _kto_label(record: dict) -> str | None:
    """The key of a KTO desirability label (a boolean per answer), if the record has one."""
    if not record.keys() & {"messages", "conversations", "completion", "output"}:
        return None
    for key in ("label", "kto_tag"):
        value = record.get(key)
        if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("true", "false")):
            return key
    return None


def apply_mapping(record: Any, mapping: dict[str, str]) -> Any:
    """Rename user columns to ours: {"text": "body"} reads record["body"] as text; nested paths in data/mapping.py."""
    from tuneforge.data.mapping import apply_mapping as apply

    return apply(record, mapping)


# Keys each format reads; any other top-level field goes to metadata (for group splits, slices) and is
# reported by validate/prepare as unused (it is never trained on).
FIELDS = {
    "chat": {"messages", "tools", "functions", "parallel_tool_calls"},
    "sharegpt": {"conversations", "system", "tools"},
    "prompt_completion": {"prompt", "completion"},
    "alpaca": {"instruction", "input", "output", "system"},
    "text": {"text"},
    "classification": {"text", "label"},
    "tokens": {"tokens", "tags", "ner_tags"},
    "rft": {"messages"},
}  # kto: the fields of the layout its conversation is written in, and the label (`used_fields`)
_PREFERENCE_FIELDS = {
    "prompt": {"prompt", "chosen", "rejected"},
    "conversations": {"conversations", "system", "chosen", "rejected"},
    "messages": {"messages", "chosen", "rejected"},
    "instruction": {"instruction", "input", "system", "chosen", "rejected"},
    "implicit": {"chosen", "rejected"},
    "openai": {"input", "preferred_output", "non_preferred_output"},
    "messages_pair": {"chosen_messages", "rejected_messages"},
}


def used_fields(record: dict, fmt: str) -> set[str]:
    if fmt == "preference":
        return _PREFERENCE_FIELDS.get(preference_layout(record) or "prompt", set())
    if fmt == "kto":
        return FIELDS[_kto_layout(record)] | {_kto_label(record) or "label"}
    return FIELDS[fmt]


def unused_fields(record: Any, fmt: str | None) -> list[str]:
    """Top-level fields the format does not read (kept in metadata, never trained on)."""
    if not isinstance(record, dict) or fmt is None:
        return []
    return sorted(str(k) for k in record.keys() - used_fields(record, fmt) - {"metadata"})


def parse(record: Any, fmt: str) -> ParseResult:
    if not isinstance(record, dict):
        return None, [
            Issue(
                "not_object",
                f"expected a JSON object, got {_type(record)}",
                fix='each record must be an object like {"messages": [...]}',
            )
        ]
    media = multimodal_issue(record, fmt)
    if media is not None:
        return None, [media]
    seen = detect(record)
    if fmt in SFT_FORMATS and seen in ("kto", "preference"):  # a forced --format must not turn these into SFT targets
        return None, [
            _refusal("kto_unsupported")
            if seen == "kto"
            else Issue(
                "format_conflict",
                f"the record is a preference pair ({preference_layout(record)} layout), not {fmt} data",
                fix="use --format preference (objective dpo); "
                "reading it as SFT would train on one answer and drop the comparison",
            )
        ]
    example, issues = PARSERS[fmt](record)
    if example is not None:
        for key in unused_fields(record, fmt):
            example.metadata.setdefault(key, record[key])
    return example, issues


def _refusal(kind: str, detail: str = "") -> Issue:
    what, fix = REFUSED[kind]
    return Issue(kind, what + (f": {detail}" if detail else ""), fix=fix)


def multimodal_issue(record: dict, fmt: str) -> Issue | None:
    """Images, audio or video in a record (media columns, content parts, placeholders): refused, not read as text."""
    for key in _MEDIA_KEYS:
        value = record.get(key)
        if value not in (None, "", [], {}):
            n = len(value) if isinstance(value, list) else 1
            return _refusal("multimodal_unsupported", f"the record has {n} {key.rstrip('s')}(s) in '{key}'")
    if fmt in ("text", "classification", "tokens"):
        return None  # a document may mention <image>; only chat-like data uses the placeholders
    found = _find_media(record)
    return _refusal("multimodal_unsupported", found) if found else None


def _find_media(value: Any, path: str = "") -> str | None:
    if isinstance(value, str):
        m = _MEDIA_PLACEHOLDER.search(value)
        return f"placeholder {m.group()} in {path or 'the record'}" if m else None
    if isinstance(value, dict):
        if value.get("type") in _MEDIA_PARTS:
            return f"a content part of type {value['type']!r} at {path}"
        items = ((k, v) for k, v in value.items() if not (path == "" and k == "metadata"))
        return next((f for k, v in items if (f := _find_media(v, f"{path}.{k}" if path else str(k)))), None)
    if isinstance(value, list):
        return next((f for i, v in enumerate(value) if (f := _find_media(v, f"{path}[{i}]"))), None)
    return None


def _type(value: Any) -> str:
    return {
        dict: "object",
        list: "array",
        str: "string",
        bool: "boolean",
        int: "number",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _metadata(record: dict, issues: list[Issue]) -> dict:
    meta = record.get("metadata", {})
    if not isinstance(meta, dict):
        issues.append(Issue("wrong_type", f"metadata must be an object, got {_type(meta)}", field="metadata"))
        return {}
    return dict(meta)


def _text(record: dict, key: str, issues: list[Issue], required: bool = True, path: str | None = None) -> str | None:
    """A required (or optional) non-empty string field."""
    path = path or key
    if key not in record or record[key] is None:
        if required:
            issues.append(Issue("missing_field", f"'{key}' is missing", field=path, fix=f"add a string '{key}'"))
        return None if required else ""
    value = record[key]
    if not isinstance(value, str):
        issues.append(Issue("wrong_type", f"'{key}' must be a string, got {_type(value)}", field=path))
        return None
    if required and not value.strip():
        issues.append(
            Issue("empty_content", f"'{key}' is empty", field=path, fix="remove the record or fill the field")
        )
        return None
    return value


def _part_text(part: Any) -> str | None:
    """The text of a content part: OpenAI's {"type": "text", "text"} or LLaMA-Factory v1's {"type": "text", "value"}."""
    if not isinstance(part, dict) or part.get("type") != "text":
        return None
    text = part.get("text", part.get("value"))
    return text if isinstance(text, str) else None


def _content(value: Any, path: str, issues: list[Issue]) -> str | None:
    """Message content: a string, or a list of text parts (joined)."""
    if isinstance(value, list) and value and all(_part_text(p) is not None for p in value):
        value = "".join(_part_text(p) for p in value)
    if not isinstance(value, str):
        issues.append(
            Issue(
                "wrong_type",
                f"content must be a string, got {_type(value)}",
                field=path,
                fix="only text content is supported",
            )
        )
        return None
    if not value.strip():
        issues.append(
            Issue("empty_content", "content is empty", field=path, fix="remove the message or write its text")
        )
        return None
    return value


def _message(m: Any, path: str, issues: list[Issue]) -> Message | None:
    if not isinstance(m, dict):
        issues.append(Issue("not_object", f"a message must be an object, got {_type(m)}", field=path))
        return None
    n = len(issues)
    role = m.get("role")
    if role == "function":  # OpenAI's legacy function result: a tool message named after its function
        role = "tool"
    if role is None:
        issues.append(
            Issue(
                "missing_role",
                "message has no 'role'",
                field=f"{path}.role",
                fix=f"set role to one of {', '.join(ROLES)}",
            )
        )
    elif role not in ROLES:
        issues.append(
            Issue("unknown_role", f"unknown role {role!r}", field=f"{path}.role", fix=f"use one of {', '.join(ROLES)}")
        )
    calls = _tool_calls(m, role, path, issues)
    calling = role == "assistant" and (m.get("tool_calls") is not None or m.get("function_call") is not None)
    if calling and m.get("content") in (None, ""):  # an assistant message that only calls tools
        content = ""
    elif "content" not in m:
        issues.append(Issue("missing_field", "message has no 'content'", field=f"{path}.content"))
        content = None
    else:
        content = _content(m["content"], f"{path}.content", issues)
    weight = _weight(m, role, path, issues)
    for key in sorted(set(m) - _MESSAGE_KEYS):
        issues.append(Issue("unknown_key", f"unknown message key {key!r} (ignored)", field=f"{path}.{key}"))
    if any(i.severity == "error" for i in issues[n:]):
        return None
    result = {k: m.get(k) for k in ("tool_call_id", "name")} if role == "tool" else {}
    result = {k: str(v) for k, v in result.items() if v is not None}
    return Message(role, content, None if weight is None else float(weight), tool_calls=calls, **result)


def _tool_calls(m: dict, role: Any, path: str, issues: list[Issue]) -> list[ToolCall] | None:
    """An assistant's `tool_calls` (or OpenAI's legacy `function_call`), read by `tool_calls.read_tool_calls`."""
    key = "tool_calls" if m.get("tool_calls") is not None else "function_call"
    if m.get(key) is None:
        return None
    if role != "assistant":
        issues.append(Issue("wrong_type", f"only assistant messages make tool calls ({role})", field=f"{path}.{key}"))
        return None
    if key == "tool_calls":
        return tool_calls.read_tool_calls(m[key], f"{path}.tool_calls", issues)
    if not isinstance(m[key], dict):
        issues.append(Issue("wrong_type", "function_call must be an object", field=f"{path}.function_call"))
        return None
    call = tool_calls.read_call(m[key], f"{path}.function_call", issues)
    return [call] if call else None


def _tools(record: dict, issues: list[Issue]) -> tuple[list[dict] | None, bool | None]:
    """The record's tools (OpenAI `tools` or legacy `functions`; LLaMA-Factory's `tools` JSON) and OpenAI's
    `parallel_tool_calls`."""
    if record.get("tools") is not None and record.get("functions") is not None:
        issues.append(Issue("invalid_tools", "both 'tools' and 'functions'", field="functions", fix="keep one"))
    key = "tools" if record.get("tools") is not None else "functions"
    parallel = record.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        issues.append(Issue("wrong_type", "parallel_tool_calls must be true or false", field="parallel_tool_calls"))
        parallel = None
    return tool_calls.read_tools(record.get(key), key, issues), parallel


def _weight(m: dict, role: Any, path: str, issues: list[Issue]) -> Any:
    """OpenAI's `weight` or LLaMA-Factory v1's `loss_weight`: 0 (not trained) or 1 on an assistant message.
    A user/system/tool message with loss_weight 0 says what tuneforge does anyway; any other value is refused,
    never rounded (fractional loss weights are not supported)."""
    key = "loss_weight" if "loss_weight" in m and "weight" not in m else "weight"
    if "loss_weight" in m and "weight" in m:
        issues.append(
            Issue("invalid_weight", "both 'weight' and 'loss_weight'", field=f"{path}.weight", fix="keep one")
        )
    weight = m.get(key)
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        issues.append(
            Issue(
                "invalid_weight",
                f"{key} must be 0 or 1, got {weight!r}",
                field=f"{path}.{key}",
                fix="0 leaves the message untrained, 1 trains it; fractional loss weights are not supported",
            )
        )
    elif weight is not None and role != "assistant" and not (key == "loss_weight" and weight == 0):
        issues.append(
            Issue(
                "invalid_weight",
                f"{key} is only allowed on assistant messages",
                field=f"{path}.{key}",
                fix="only assistant messages are trained; remove it",
            )
        )
    elif weight is not None and role != "assistant":
        return None
    return weight


def _messages(value: Any, path: str, issues: list[Issue], needs_assistant: bool = True) -> list[Message] | None:
    if value is None:
        issues.append(
            Issue("missing_field", f"'{path}' is missing", field=path, fix="add a list of {role, content} messages")
        )
        return None
    if not isinstance(value, list):
        issues.append(Issue("wrong_type", f"'{path}' must be a list of messages, got {_type(value)}", field=path))
        return None
    if not value:
        issues.append(Issue("empty_content", f"'{path}' is empty", field=path))
        return None
    n = len(issues)
    msgs = [_message(m, f"{path}[{i}]", issues) for i, m in enumerate(value)]
    if any(i.severity == "error" for i in issues[n:]):
        return None
    out = [m for m in msgs if m is not None]
    if needs_assistant:
        assistants = [m for m in out if m.role == "assistant"]
        if not assistants:
            issues.append(
                Issue(
                    "no_assistant",
                    "no assistant message: nothing to learn",
                    field=path,
                    fix="add the answer the model should give",
                )
            )
            return None
        if all(m.weight == 0 for m in assistants):
            issues.append(Issue("no_trainable", "every assistant message has weight 0: nothing to learn", field=path))
            return None
    return out


def parse_chat(record: dict) -> ParseResult:
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    tools, parallel = _tools(record, issues)
    msgs = _messages(record.get("messages"), "messages", issues)
    if msgs is not None:
        tool_calls.check_tool_use(msgs, tools, parallel, "messages", issues)
    if msgs is None or _errors(issues):
        return None, issues
    return Conversation(msgs, meta, tools=tools, parallel_tool_calls=parallel), issues


def _sharegpt_turns(turns: Any, path: str, issues: list[Issue]) -> list[dict] | None:
    """ShareGPT turns ({"from", "value"}) as {"role", "content"} dicts for `_messages`; None on errors."""
    if not isinstance(turns, list):
        issues.append(Issue("wrong_type", f"'{path}' must be a list, got {_type(turns)}", field=path))
        return None
    n, converted = len(issues), []
    for i, t in enumerate(turns):
        where = f"{path}[{i}]"
        if not isinstance(t, dict):
            issues.append(Issue("not_object", f"a turn must be an object, got {_type(t)}", field=where))
            continue
        who = t.get("from")
        if who is None:
            issues.append(
                Issue("missing_role", "turn has no 'from'", field=f"{where}.from", fix="use human/gpt/system")
            )
        elif who not in _SHAREGPT_ROLES:
            issues.append(
                Issue("unknown_role", f"unknown speaker {who!r}", field=f"{where}.from", fix="use human/gpt/system")
            )
        if who == "function_call":  # the value is the call itself: {"name", "arguments"} or a list of them
            calls = tool_calls.sharegpt_calls(t.get("value"), f"{where}.value", issues)
            converted.append({"role": "assistant", "content": None, "tool_calls": calls})
            continue
        converted.append(
            {"role": _SHAREGPT_ROLES.get(who, who), "content": t.get("value")}
            if "value" in t
            else {"role": _SHAREGPT_ROLES.get(who, who)}
        )
    return None if _errors(issues[n:]) else converted


def _system(record: dict, issues: list[Issue]) -> list[Message]:
    """A top-level `system` column (ShareGPT/LLaMA-Factory, Alpaca) as the first message."""
    system = _text(record, "system", issues, required=False)
    return [Message("system", system)] if system and system.strip() else []


def parse_sharegpt(record: dict) -> ParseResult:
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    system = _system(record, issues)
    tools, _ = _tools({"tools": record.get("tools")}, issues)
    converted = _sharegpt_turns(record.get("conversations"), "conversations", issues)
    if converted is None or _errors(issues):
        return None, issues
    msgs = _messages(converted, "conversations", issues)
    if msgs is not None:
        tool_calls.check_tool_use(msgs, tools, None, "conversations", issues)
        if _errors(issues):
            return None, issues
    if msgs and system and msgs[0].role == "system":
        issues.append(
            Issue(
                "duplicate_system", "both a 'system' column and a system turn", field="system", fix="keep one of them"
            )
        )
        return None, issues
    return (Conversation(system + msgs, meta, tools=tools) if msgs is not None else None), issues


def parse_prompt_completion(record: dict) -> ParseResult:
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    prompt, completion = _text(record, "prompt", issues), _text(record, "completion", issues)
    if _errors(issues):
        return None, issues
    return Conversation([Message("user", prompt), Message("assistant", completion)], meta), issues


def parse_alpaca(record: dict) -> ParseResult:
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    instruction, output = _text(record, "instruction", issues), _text(record, "output", issues)
    extra, system = _text(record, "input", issues, required=False), _text(record, "system", issues, required=False)
    if _errors(issues):
        return None, issues
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    msgs = ([Message("system", system)] if system and system.strip() else []) + [
        Message("user", user),
        Message("assistant", output),
    ]
    return Conversation(msgs, meta), issues


def parse_text(record: dict) -> ParseResult:
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    text = _text(record, "text", issues)
    return (TextExample(text, meta) if not _errors(issues) else None), issues


def parse_classification(record: dict) -> ParseResult:
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    text = _text(record, "text", issues)
    label = record.get("label")
    if label is None or (isinstance(label, str) and not label.strip()):
        issues.append(Issue("missing_field", "'label' is missing or empty", field="label"))
    elif isinstance(label, bool) or not isinstance(label, (str, int)):
        issues.append(Issue("wrong_type", f"'label' must be a string or integer, got {_type(label)}", field="label"))
    if _errors(issues):
        return None, issues
    return LabelledExample(text, str(label), meta), issues


def parse_tokens(record: dict) -> ParseResult:
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    key = "tags" if "tags" in record else "ner_tags"
    tokens, tags = record.get("tokens"), record.get(key)
    for name, value in (("tokens", tokens), (key, tags)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            issues.append(
                Issue(
                    "wrong_type",
                    f"'{name}' must be a list of strings",
                    field=name,
                    fix="tags need their names (B-PER), not class ids",
                )
            )
    if _errors(issues):
        return None, issues
    if not tokens:
        issues.append(Issue("empty_content", "'tokens' is empty", field="tokens"))
    if len(tokens) != len(tags):
        issues.append(
            Issue(
                "tags_mismatch",
                f"{len(tokens)} tokens but {len(tags)} tags",
                field=key,
                fix="give exactly one tag per token",
            )
        )
    for i, tag in enumerate(tags):
        if not _BIO.match(tag):
            issues.append(
                Issue("invalid_tag", f"{tag!r} is not a BIO tag", field=f"{key}[{i}]", fix="use O, B-TYPE or I-TYPE")
            )
        elif tag.startswith("I-") and (i == 0 or tags[i - 1][2:] != tag[2:]):
            issues.append(Issue("bio_sequence", f"{tag} does not continue a {tag[2:]} entity", field=f"{key}[{i}]"))
    if _errors(issues):
        return None, issues
    return TokenExample(list(tokens), list(tags), meta), issues


def parse_preference(record: dict) -> ParseResult:
    """Every preference layout -> the PreferencePair the dpo objective encodes: the prompt messages and one
    assistant answer each for chosen and rejected. Layouts (see `preference_layout`):
      prompt        {"prompt": str | [msgs], "chosen": str | msg | [msgs], "rejected": ...} (tuneforge, TRL)
      conversations {"conversations": [turns], "chosen": {"from", "value"}, "rejected": ...} (ShareGPT, LLaMA-Factory)
      messages      {"messages": [msgs], "chosen": msg | str, "rejected": ...} (LLaMA-Factory with OpenAI tags)
      instruction   {"instruction", "input"?, "system"?, "chosen": str, "rejected": str} (Alpaca ranking)
      openai        {"input": {"messages"}, "preferred_output": [msgs], "non_preferred_output": [msgs]} (OpenAI DPO)
      messages_pair {"chosen_messages": [msgs], "rejected_messages": [msgs]} (LLaMA-Factory v1, whole conversations)
      implicit      {"chosen": [msgs], "rejected": [msgs]} (TRL implicit prompt, whole conversations)
    A whole-conversation pair is split at its longest shared prefix; what follows on each side must be one
    assistant message (DPO compares two answers to one prompt; more would be dropped, so it is an error).
    """
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    layout = preference_layout(record) or "prompt"
    keys = {
        "openai": ("preferred_output", "non_preferred_output"),
        "messages_pair": ("chosen_messages", "rejected_messages"),
    }
    chosen_key, rejected_key = keys.get(layout, ("chosen", "rejected"))
    prompt = _preference_prompt(record, layout, issues)
    answers = [_answer_messages(record.get(k), k, layout, issues) for k in (chosen_key, rejected_key)]
    if _errors(issues) or any(a is None for a in answers):
        return None, issues
    if prompt is None:  # whole conversations: the prompt is what both share
        prompt = _shared_prefix(*answers)
        cut = len(prompt)
    else:  # answers may repeat the prompt (TRL writes whole conversations next to a prompt too)
        cut = (
            len(prompt)
            if prompt and all(_same(a[: len(prompt)], prompt) and len(a) > len(prompt) for a in answers)
            else 0
        )
    if not prompt:
        issues.append(
            Issue(
                "no_prompt",
                f"no prompt: '{chosen_key}' and '{rejected_key}' share no leading messages",
                field=chosen_key,
                fix="give the prompt the answers respond to",
            )
        )
        return None, issues
    for key, msgs in (("prompt", prompt), (chosen_key, answers[0]), (rejected_key, answers[1])):
        _no_tools(msgs, key, issues)
    chosen, rejected = (_one_answer(a[cut:], k, issues) for a, k in zip(answers, (chosen_key, rejected_key)))
    if _errors(issues):
        return None, issues
    if chosen == rejected:
        issues.append(
            Issue("identical_pair", "chosen and rejected are identical: no preference signal", field=rejected_key)
        )
    return PreferencePair(prompt, chosen, rejected, meta), issues


def _preference_prompt(record: dict, layout: str, issues: list[Issue]) -> list[Message] | None:
    """The prompt messages of an explicit-prompt layout; None for whole-conversation layouts (or on errors)."""
    if layout in ("implicit", "messages_pair"):
        return None
    if layout == "openai":
        value = record.get("input")
        if not isinstance(value, dict):
            issues.append(
                Issue("wrong_type", f"'input' must be an object with 'messages', got {_type(value)}", field="input")
            )
            return []
        for key in sorted(set(value) - {"messages"}):
            issues.append(Issue("unknown_key", f"input key {key!r} is not used (ignored)", field=f"input.{key}"))
        return _messages(value.get("messages"), "input.messages", issues, needs_assistant=False) or []
    if layout == "instruction":
        instruction, extra = _text(record, "instruction", issues), _text(record, "input", issues, required=False)
        user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        return _system(record, issues) + [Message("user", user)] if instruction else []
    if layout == "conversations":
        turns = _sharegpt_turns(record.get("conversations"), "conversations", issues)
        return (
            _system(record, issues) + (_messages(turns, "conversations", issues, needs_assistant=False) or [])
            if turns is not None
            else []
        )
    value = record.get(layout)
    if isinstance(value, str):
        return [Message("user", value)] if _text(record, layout, issues) else []
    return _messages(value, layout, issues, needs_assistant=False) or []


def _answer_messages(value: Any, key: str, layout: str, issues: list[Issue]) -> list[Message] | None:
    """An answer as messages: a string (one assistant message), one message object, or a list of messages."""
    if isinstance(value, str):
        if not value.strip():
            issues.append(
                Issue("empty_content", f"'{key}' is empty", field=key, fix="remove the record or write the answer")
            )
            return None
        return [Message("assistant", value)]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and layout == "conversations":
        value = _sharegpt_turns(value, key, issues)
        if value is None:
            return None
    if not isinstance(value, list):
        issues.append(
            Issue(
                "missing_field" if value is None else "wrong_type",
                f"'{key}' must be a string, a message or a list of messages, got {_type(value)}",
                field=key,
            )
        )
        return None
    return _messages(value, key, issues, needs_assistant=False)


def _same(a: list[Message], b: list[Message]) -> bool:
    return [(m.role, m.content) for m in a] == [(m.role, m.content) for m in b]


def _shared_prefix(a: list[Message], b: list[Message]) -> list[Message]:
    n = 0
    while n < min(len(a), len(b)) - 1 and _same(a[n : n + 1], b[n : n + 1]):
        n += 1
    return a[:n]


def _one_answer(msgs: list[Message], key: str, issues: list[Issue]) -> str | None:
    if len(msgs) != 1 or msgs[0].role != "assistant":
        roles = ", ".join(m.role for m in msgs) or "nothing"
        issues.append(
            Issue(
                "not_one_answer",
                f"after the prompt, '{key}' holds {roles}; a preference pair compares one assistant answer",
                field=key,
                fix="put the shared turns in the prompt and one assistant message in each answer",
            )
        )
        return None
    return msgs[0].content


def _no_tools(msgs: list[Message] | None, key: str, issues: list[Issue]) -> None:
    """Preference, KTO and RFT objectives train text answers: tool calls and results there are refused, not
    dropped."""
    at = next((i for i, m in enumerate(msgs or []) if m.tool_calls or m.role == "tool"), None)
    if at is not None:
        issues.append(
            Issue(
                "tools_unsupported",
                "tool calls and tool results in preference, KTO or RFT data are not supported yet",
                field=f"{key}[{at}]",
                fix="train tool calling with objective sft on chat data (assistant tool_calls, role tool)",
            )
        )


def _kto_layout(record: dict) -> str:
    """The SFT layout a KTO record's conversation is written in (the label aside)."""
    layouts = (("messages", "chat"), ("conversations", "sharegpt"), ("instruction", "alpaca"))
    return next((fmt for key, fmt in layouts if key in record), "prompt_completion")


def parse_kto(record: dict) -> ParseResult:
    """KTO data -> a LabelledAnswer: a prompt, one assistant answer and whether it is desirable. Layouts:
      TRL            {"prompt": str | [msgs], "completion": str | msg | [msgs], "label": bool}
      LLaMA-Factory  {"messages": [msgs] | "conversations": [turns] | "instruction", "input"?, "output",
                      "label" | "kto_tag": bool}
    The judged answer is the final assistant message; what precedes it is the prompt (earlier assistant turns are
    context, never targets). A label written as the string "true"/"false" is read as the boolean.
    """
    key = _kto_label(record)
    if key is None:
        return None, [
            Issue(
                "missing_field",
                "no desirability label: KTO data needs a boolean 'label' (TRL) or 'kto_tag' (LLaMA-Factory)",
                field="label",
                fix='add "label": true for a desirable answer, false for an undesirable one',
            )
        ]
    desirable = record[key] if isinstance(record[key], bool) else record[key].strip().lower() == "true"
    rest = {k: v for k, v in record.items() if k != key}
    issues: list[Issue] = []
    layout = _kto_layout(record)
    if layout == "prompt_completion":
        meta = _metadata(record, issues)
        prompt = _preference_prompt(rest, "prompt", issues)
        answer = _answer_messages(record.get("completion"), "completion", "prompt", issues)
        _no_tools((prompt or []) + (answer or []), "prompt", issues)
        completion = _one_answer(answer, "completion", issues) if answer is not None and not _errors(issues) else None
    else:  # a whole conversation whose last message is the judged answer
        conv, issues = PARSERS[layout](rest)
        if conv is None:
            return None, issues
        meta, prompt, last = conv.metadata, conv.messages[:-1], conv.messages[-1]
        _no_tools(conv.messages, layout if layout != "chat" else "messages", issues)
        completion = last.content if last.role == "assistant" else None
        if completion is None:
            issues.append(
                Issue(
                    "not_one_answer",
                    f"the conversation ends with a {last.role} message; KTO judges its final assistant answer",
                    field=layout,
                    fix="end each record with the answer its label judges",
                )
            )
    if _errors(issues):
        return None, issues
    if not prompt:
        issues.append(
            Issue(
                "no_prompt",
                "no prompt before the judged answer",
                field="prompt",
                fix="give the prompt the answer responds to",
            )
        )
        return None, issues
    return LabelledAnswer([Message(m.role, m.content) for m in prompt], completion, desirable, meta), issues


def parse_rft(record: dict) -> ParseResult:
    """OpenAI's reinforcement fine-tuning JSONL -> a PromptExample: `messages` ending in a user turn (the prompt, no
    answer: the model samples them), and any other top-level fields, which graders read as {{item.field}}."""
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    msgs = _messages(record.get("messages"), "messages", issues, needs_assistant=False)
    _no_tools(msgs, "messages", issues)
    if msgs is not None and msgs[-1].role != "user":
        issues.append(
            Issue(
                "not_a_prompt",
                f"the messages end with a {msgs[-1].role} message; reinforcement data "
                "ends with the user turn the model answers",
                field=f"messages[{len(msgs) - 1}]",
                fix="remove the trailing answer (graders score sampled answers) or use objective sft",
            )
        )
    if msgs is None or _errors(issues):
        return None, issues
    return PromptExample([Message(m.role, m.content) for m in msgs], meta), issues


def _errors(issues: list[Issue]) -> bool:
    return any(i.severity == "error" for i in issues)


PARSERS: dict[str, Callable[[dict], ParseResult]] = {
    "chat": parse_chat,
    "sharegpt": parse_sharegpt,
    "prompt_completion": parse_prompt_completion,
    "alpaca": parse_alpaca,
    "text": parse_text,
    "classification": parse_classification,
    "tokens": parse_tokens,
    "preference": parse_preference,
    "kto": parse_kto,
    "rft": parse_rft,
}
