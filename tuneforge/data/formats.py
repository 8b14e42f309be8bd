"""Record formats: one parsed record (a dict) -> one example of data/types.py, or issues.

Each parser checks everything it can about its record and returns all issues at once
(field paths like `messages[2].content`); file and line are stamped on by the caller.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from tuneforge.data.issues import Issue
from tuneforge.data.types import ROLES, Conversation, Example, LabelledExample, Message, PreferencePair, TextExample, TokenExample

FORMATS = ("chat", "prompt_completion", "alpaca", "sharegpt", "text", "classification", "tokens", "preference")
ALIASES = {"openai": "chat", "messages": "chat", "completion": "prompt_completion", "labelled": "classification",
           "labeled": "classification", "ner": "tokens", "dpo": "preference", "raw": "text"}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant",
                   "model": "assistant", "bard": "assistant", "system": "system", "tool": "tool", "function": "tool", "observation": "tool"}
_MESSAGE_KEYS = {"role", "content", "weight", "name", "tool_calls", "tool_call_id"}
_BIO = re.compile(r"^(O|[BI]-\S+)$")

ParseResult = tuple["Example | None", list[Issue]]


def canonical_format(name: str) -> str:
    return ALIASES.get(name, name)


def detect(record: Any) -> str | None:
    """The format a record looks like, from its keys; None if it matches none."""
    if not isinstance(record, dict):
        return None
    keys = record.keys()
    if "messages" in keys:
        return "chat"
    if "conversations" in keys:
        return "sharegpt"
    if {"chosen", "rejected"} <= keys:
        return "preference"
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


def apply_mapping(record: Any, mapping: dict[str, str]) -> Any:
    """Rename user columns to ours: mapping {"text": "body"} reads record["body"] as text."""
    if not mapping or not isinstance(record, dict):
        return record
    out = {k: v for k, v in record.items() if k not in mapping.values()}
    for ours, theirs in mapping.items():
        if theirs in record:
            out[ours] = record[theirs]
    return out


# Keys each format reads; any other top-level field goes to metadata (for group splits, slices).
FIELDS = {
    "chat": {"messages"}, "sharegpt": {"conversations"}, "prompt_completion": {"prompt", "completion"},
    "alpaca": {"instruction", "input", "output", "system"}, "text": {"text"}, "classification": {"text", "label"},
    "tokens": {"tokens", "tags", "ner_tags"}, "preference": {"prompt", "chosen", "rejected"},
}


def parse(record: Any, fmt: str) -> ParseResult:
    if not isinstance(record, dict):
        return None, [Issue("not_object", f"expected a JSON object, got {_type(record)}", fix="each record must be an object like {\"messages\": [...]}")]
    example, issues = PARSERS[fmt](record)
    if example is not None:
        for key in record.keys() - FIELDS[fmt] - {"metadata"}:
            example.metadata.setdefault(str(key), record[key])
    return example, issues


def _type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number", type(None): "null"}.get(type(value), type(value).__name__)


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
        issues.append(Issue("empty_content", f"'{key}' is empty", field=path, fix="remove the record or fill the field"))
        return None
    return value


def _content(value: Any, path: str, issues: list[Issue]) -> str | None:
    """Message content: a string, or OpenAI's list of {"type": "text", "text": ...} parts."""
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
        value = "".join(p["text"] for p in value)
    if not isinstance(value, str):
        issues.append(Issue("wrong_type", f"content must be a string, got {_type(value)}", field=path, fix="only text content is supported"))
        return None
    if not value.strip():
        issues.append(Issue("empty_content", "content is empty", field=path, fix="remove the message or write its text"))
        return None
    return value


def _message(m: Any, path: str, issues: list[Issue]) -> Message | None:
    if not isinstance(m, dict):
        issues.append(Issue("not_object", f"a message must be an object, got {_type(m)}", field=path))
        return None
    n = len(issues)
    role = m.get("role")
    if role is None:
        issues.append(Issue("missing_role", "message has no 'role'", field=f"{path}.role", fix=f"set role to one of {', '.join(ROLES)}"))
    elif role not in ROLES:
        issues.append(Issue("unknown_role", f"unknown role {role!r}", field=f"{path}.role", fix=f"use one of {', '.join(ROLES)}"))
    if "content" not in m:
        issues.append(Issue("missing_field", "message has no 'content'", field=f"{path}.content"))
        content = None
    else:
        content = _content(m["content"], f"{path}.content", issues)
    weight = m.get("weight")
    if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
        issues.append(Issue("invalid_weight", f"weight must be 0 or 1, got {weight!r}", field=f"{path}.weight"))
    elif weight is not None and role != "assistant":
        issues.append(Issue("invalid_weight", "weight is only allowed on assistant messages", field=f"{path}.weight"))
    for key in sorted(set(m) - _MESSAGE_KEYS):
        issues.append(Issue("unknown_key", f"unknown message key {key!r} (ignored)", field=f"{path}.{key}"))
    if any(i.severity == "error" for i in issues[n:]):
        return None
    return Message(role, content, None if weight is None else float(weight))


def _messages(value: Any, path: str, issues: list[Issue], needs_assistant: bool = True) -> list[Message] | None:
    if value is None:
        issues.append(Issue("missing_field", f"'{path}' is missing", field=path, fix="add a list of {role, content} messages"))
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
            issues.append(Issue("no_assistant", "no assistant message: nothing to learn", field=path, fix="add the answer the model should give"))
            return None
        if all(m.weight == 0 for m in assistants):
            issues.append(Issue("no_trainable", "every assistant message has weight 0: nothing to learn", field=path))
            return None
    return out


def parse_chat(record: dict) -> ParseResult:
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    msgs = _messages(record.get("messages"), "messages", issues)
    return (Conversation(msgs, meta) if msgs is not None and not _errors(issues) else None), issues


def parse_sharegpt(record: dict) -> ParseResult:
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return None, issues + [Issue("wrong_type", f"'conversations' must be a list, got {_type(turns)}", field="conversations")]
    converted = []
    for i, t in enumerate(turns):
        path = f"conversations[{i}]"
        if not isinstance(t, dict):
            issues.append(Issue("not_object", f"a turn must be an object, got {_type(t)}", field=path))
            continue
        who = t.get("from")
        if who is None:
            issues.append(Issue("missing_role", "turn has no 'from'", field=f"{path}.from", fix="use human/gpt/system"))
        elif who not in _SHAREGPT_ROLES:
            issues.append(Issue("unknown_role", f"unknown speaker {who!r}", field=f"{path}.from", fix="use human/gpt/system"))
        converted.append({"role": _SHAREGPT_ROLES.get(who, who), "content": t.get("value")} if "value" in t else {"role": _SHAREGPT_ROLES.get(who, who)})
    if _errors(issues):
        return None, issues
    msgs = _messages(converted, "conversations", issues)
    return (Conversation(msgs, meta) if msgs is not None else None), issues


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
    msgs = ([Message("system", system)] if system and system.strip() else []) + [Message("user", user), Message("assistant", output)]
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
            issues.append(Issue("wrong_type", f"'{name}' must be a list of strings", field=name, fix="tags need their names (B-PER), not class ids"))
    if _errors(issues):
        return None, issues
    if not tokens:
        issues.append(Issue("empty_content", "'tokens' is empty", field="tokens"))
    if len(tokens) != len(tags):
        issues.append(Issue("tags_mismatch", f"{len(tokens)} tokens but {len(tags)} tags", field=key, fix="give exactly one tag per token"))
    for i, tag in enumerate(tags):
        if not _BIO.match(tag):
            issues.append(Issue("invalid_tag", f"{tag!r} is not a BIO tag", field=f"{key}[{i}]", fix="use O, B-TYPE or I-TYPE"))
        elif tag.startswith("I-") and (i == 0 or tags[i - 1][2:] != tag[2:]):
            issues.append(Issue("bio_sequence", f"{tag} does not continue a {tag[2:]} entity", field=f"{key}[{i}]"))
    if _errors(issues):
        return None, issues
    return TokenExample(list(tokens), list(tags), meta), issues


def parse_preference(record: dict) -> ParseResult:
    issues: list[Issue] = []
    meta = _metadata(record, issues)
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        prompt_msgs = [Message("user", prompt)] if _text(record, "prompt", issues) else None
    else:
        prompt_msgs = _messages(prompt, "prompt", issues, needs_assistant=False)
    answers = [_answer(record, key, issues) for key in ("chosen", "rejected")]
    if _errors(issues) or prompt_msgs is None:
        return None, issues
    if answers[0] == answers[1]:
        issues.append(Issue("identical_pair", "chosen and rejected are identical: no preference signal", field="rejected"))
    return PreferencePair(prompt_msgs, answers[0], answers[1], meta), issues


def _answer(record: dict, key: str, issues: list[Issue]) -> str | None:
    """A preference answer: a string, or a message list whose last assistant message counts."""
    value = record.get(key)
    if isinstance(value, list):
        msgs = _messages(value, key, issues)
        return msgs and [m for m in msgs if m.role == "assistant"][-1].content
    return _text(record, key, issues)


def _errors(issues: list[Issue]) -> bool:
    return any(i.severity == "error" for i in issues)


PARSERS: dict[str, Callable[[dict], ParseResult]] = {
    "chat": parse_chat, "sharegpt": parse_sharegpt, "prompt_completion": parse_prompt_completion, "alpaca": parse_alpaca,
    "text": parse_text, "classification": parse_classification, "tokens": parse_tokens, "preference": parse_preference,
}
