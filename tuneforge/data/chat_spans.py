"""Where the trained characters of a chat are, for any chat template: found by construction, checked.

The conversation is rendered twice: with its real contents, and with a unique sentinel in place of
every message content (an assistant `<think>` block gets one sentinel for the reasoning and one for the
answer, so a template that moves or strips reasoning, as Qwen 3's does, sees the same structure).
Replacing each sentinel by its text must give the real rendering exactly; then the sentinels'
positions are the contents' character spans in it, whatever the template does around them: a system
prompt moved into a later turn (Mistral), `<think></think>` added to the last answer (Qwen 3), EOS after
the last message (Phi-3). Each assistant span is extended over the end-of-turn token the template writes
right after the content (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`, `<|end|>`).

What cannot be located exactly is refused, never guessed: a template that rewrites a content, drops a
message or refuses the roles, or writes no end-of-turn token. Errors name the record (file:line), the
template and the fix. Cost: two template renderings per conversation (prefix-by-prefix needed 2 per turn).
"""

from __future__ import annotations

import json
import re
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2

from tuneforge.data.tool_calls import parse_tool_calls, same_calls
from tuneforge.data.types import ToolCall
from tuneforge.errors import DataError, Problem
from tuneforge.models.chat_templates import end_of_turn_ids

SYSTEM_PROMPT_POLICIES = ("keep", "fold", "drop")
_THINK = re.compile(r"^(\s*<think>)(.*?)(</think>)(.*)$", re.DOTALL)  # reasoning, then the answer
_THINK_OPEN = re.compile(r"<think>\s*\Z")
_SYSTEM_FIX = "set data.system_prompt: fold (it opens the first user turn) or drop (`data validate --system-prompt`)"


@dataclass(frozen=True)
class ChatSpans:
    text: str  # the conversation as the template renders it
    spans: list[tuple[int, int]]  # characters that carry loss: each trained assistant content + its end-of-turn token
    dropped_system: int = 0  # system messages removed by `system_prompt="drop"`


@dataclass(frozen=True)
class _Piece:
    message: int  # index of the message in the conversation as written
    role: str
    sentinel: str
    text: str  # what the sentinel stands for: the content without its surrounding whitespace
    trail: str = ""  # the content's trailing whitespace (templates that keep it write it before the end-of-turn token)
    reasoning: bool = False
    calling: bool = False  # a piece (text or call name) of an assistant message with tool calls


def where_of(conv: Any) -> str:
    """file:line of a conversation (set by the readers), or the best that is known."""
    source = getattr(conv, "source", "")
    if source:
        return source
    line = conv.metadata.get("source_line") if getattr(conv, "metadata", None) else None
    return f"record at line {line}" if line is not None else "a conversation"


def template_name(tokenizer: Any) -> str:
    name = str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)
    return f"the chat template of {Path(name).name or name}"


def apply_system_prompt(messages: list[dict], policy: str, where: str) -> tuple[list[dict], list[int], int]:
    """keep: as written; fold: the leading system prompt opens the first user turn (what Gemma 3's template
    does); drop: every system message removed. Returns the messages, the original index of each, and how
    many were dropped."""
    if policy not in SYSTEM_PROMPT_POLICIES:
        raise ValueError(f"system_prompt must be one of {SYSTEM_PROMPT_POLICIES}, not {policy!r}")
    origin = list(range(len(messages)))
    if policy == "keep" or not any(m["role"] == "system" for m in messages):
        return messages, origin, 0
    if policy == "drop":
        origin = [i for i, m in enumerate(messages) if m["role"] != "system"]
        return [messages[i] for i in origin], origin, len(messages) - len(origin)
    lead = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    if lead == 0:  # a system message later in the conversation stays where it is
        return messages, origin, 0
    if lead == len(messages) or messages[lead]["role"] != "user":
        raise DataError(
            "cannot fold the system prompt into a user turn",
            [
                Problem(
                    where,
                    "no user message follows the system prompt",
                    "start the conversation with a user message, or data.system_prompt: drop",
                )
            ],
        )
    prefix = "\n\n".join(m["content"] for m in messages[:lead])
    folded = [{**messages[lead], "content": f"{prefix}\n\n{messages[lead]['content']}"}, *messages[lead + 1 :]]
    return folded, origin[lead:], 0


def render(
    tokenizer: Any, messages: list[dict], where: str, add_generation_prompt: bool = False, tools: list | None = None
) -> str:
    """The template's text; a refused conversation or a missing template is a located DataError."""
    if not getattr(tokenizer, "chat_template", None):
        model = template_name(tokenizer).removeprefix("the chat template of ")
        raise DataError(
            f"{model} has no chat template",
            [
                Problem(
                    where,
                    f"{model} has no chat template: chat data needs one to mark the assistant's turns",
                    "set model.chat_template: chatml (built in: chatml, llama3, mistral, gemma, phi3, alpaca, "
                    "or a .jinja file), use a chat model, or train raw text with objective: clm",
                )
            ],
        )
    try:
        extra = {"tools": tools} if tools else {}
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **extra
        )
    except jinja2.TemplateError as exc:
        raise DataError(
            f"{template_name(tokenizer)} refuses a conversation",
            [Problem(where, f"{template_name(tokenizer)} raised: {exc}", _refusal_fix(tokenizer, messages, where))],
        ) from None


def _refusal_fix(tokenizer: Any, messages: list[dict], where: str) -> str:
    roles = [m["role"] for m in messages]
    parallel = next((i for i, m in enumerate(messages) if len(m.get("tool_calls") or []) > 1), None)
    if parallel is not None:
        return (
            f"messages[{parallel}] makes {len(messages[parallel]['tool_calls'])} tool calls at once: this template may "
            "take one per assistant message; split them into turns, or use a template with parallel calls (chatml)"
        )
    if "system" in roles:
        try:
            tokenizer.apply_chat_template(apply_system_prompt(messages, "fold", where)[0], tokenize=False)
            return f"this template takes no system role: {_SYSTEM_FIX}"
        except (jinja2.TemplateError, DataError):
            pass
    later = next((i for i, r in enumerate(roles) if r == "system" and any(q != "system" for q in roles[:i])), None)
    if later is not None:
        return f"messages[{later}] is a system message inside the conversation: merge it into a user turn or remove it"
    chat = [r for r in roles if r not in ("system", "tool")]
    twice = next((i for i in range(1, len(chat)) if chat[i] == chat[i - 1]), None)
    if twice is not None:
        return f"roles must alternate user/assistant: merge the two consecutive {chat[twice]} messages into one"
    if chat and chat[0] != "user":
        return "start the conversation with a user message"
    return "make the conversation fit the template (roles it accepts, in its order)"


def chat_spans(
    tokenizer: Any,
    messages: list[dict],
    trained: set[int],
    where: str,
    system_prompt: str = "keep",
    tools: list[dict] | None = None,
) -> ChatSpans:
    """The rendering of `messages` (and `tools`, given to the template) and the loss spans of the assistant
    messages whose index is in `trained`. An assistant message with `tool_calls` (HF's layout, see
    `data.tool_calls`) trains from the end of its generation prompt to its end-of-turn token: the calls as
    the template writes them, checked to parse back into the same calls."""
    kept, origin, dropped = apply_system_prompt(messages, system_prompt, where)
    text = render(tokenizer, kept, where, tools=tools)
    pieces, stand_ins = _with_sentinels(kept, origin, json.dumps([messages, tools], ensure_ascii=False))
    shape = render(tokenizer, stand_ins, where, tools=tools)
    starts, ends = _substitute(tokenizer, text, shape, pieces, where)
    spans = []
    for i in sorted(trained):
        own = [p for p in pieces if p.message == i and p.sentinel in starts]
        k = origin.index(i)
        if kept[k].get("tool_calls"):
            spans.append(_call_span(tokenizer, text, kept, k, tools, own, pieces, starts, ends, where))
        else:
            spans.append(_turn_span(tokenizer, text, own, starts, ends, where, i))
    return ChatSpans(text, spans, dropped)


def _with_sentinels(messages: list[dict], origin: list[int], used: str) -> tuple[list[_Piece], list[dict]]:
    """Each content replaced by a sentinel (two for `<think>reasoning</think>answer`), its whitespace kept;
    each tool call's name too (its arguments stay: templates write them with tojson, which a sentinel
    would not survive unchanged). A tool-calling message without text keeps its empty content."""
    mark = next(chr(c) for c in range(0xE000, 0xF8FF) if chr(c) not in used)  # a private-use character none has
    pieces: list[_Piece] = []
    out = []
    for i, m in enumerate(messages):
        if m.get("tool_calls"):
            calls = []
            for call in m["tool_calls"]:
                sentinel = f"{mark}{len(pieces)}{mark}"
                pieces.append(_Piece(origin[i], m["role"], sentinel, call["function"]["name"], calling=True))
                calls.append({**call, "function": {**call["function"], "name": sentinel}})
            m = {**m, "tool_calls": calls}
            if not m["content"].strip():
                out.append(m)
                continue
        think = _THINK.match(m["content"]) if m["role"] == "assistant" else None
        parts = (
            [(think.group(1), think.group(2), True), (think.group(3), think.group(4), False)]
            if think
            else [("", m["content"], False)]
        )
        content = ""
        for before, part, reasoning in parts:
            lead, core, trail = _split_space(part)
            sentinel = f"{mark}{len(pieces)}{mark}"
            pieces.append(_Piece(origin[i], m["role"], sentinel, core, trail, reasoning, bool(m.get("tool_calls"))))
            content += before + lead + sentinel + trail
        out.append({**m, "content": content})
    return pieces, out


def _split_space(s: str) -> tuple[str, str, str]:
    core = s.strip()
    if not core:
        return s, "", ""
    lead = s[: s.index(core)]
    return lead, core, s[len(lead) + len(core) :]


def _substitute(
    tokenizer: Any, text: str, shape: str, pieces: list[_Piece], where: str
) -> tuple[dict[str, int], dict[str, int]]:
    """Start and end in `text` of every sentinel that `shape` contains; checks shape -> text exactly."""
    name = template_name(tokenizer)
    at = {}
    for p in pieces:
        n = shape.count(p.sentinel)
        if n > 1:
            raise _refuse(
                name, where, f"writes messages[{p.message}] {n} times", "use a template that writes each message once"
            )
        if n == 0 and not p.reasoning:  # reasoning left out of earlier turns is the template's own choice (Qwen 3)
            role = p.role
            fix = _SYSTEM_FIX if role == "system" else f"remove the {role} message or use a template that renders it"
            if p.calling:
                fix = "this template writes only the calls of a tool-calling message: remove its text (content) or "
                fix += "use a template that writes both (Qwen 2.5's, chatml)"
            raise _refuse(name, where, f"drops messages[{p.message}] (role {role}) from the conversation", fix)
        if n == 1:
            at[p.sentinel] = shape.index(p.sentinel)
    order = sorted((p for p in pieces if p.sentinel in at), key=lambda p: at[p.sentinel])
    expected, starts, ends = _rebuild(shape, order, at, {})
    if expected != text and any(p.role == "tool" for p in order):
        # Llama 3.1 writes a tool result with tojson (quoted, escaped): the result is not trained, so its
        # escaped form is accepted where the plain one is not
        quoted = {p.sentinel: json.dumps(p.text, ensure_ascii=False)[1:-1] for p in order if p.role == "tool"}
        expected, starts, ends = _rebuild(shape, order, at, quoted)
    if expected != text:
        k = next((j for j, (a, b) in enumerate(zip(expected, text)) if a != b), min(len(expected), len(text)))
        raise _refuse(
            name,
            where,
            f"does not write message contents verbatim (at character {k}: {text[max(0, k - 20) : k + 20]!r})",
            "the assistant tokens cannot be located exactly; use a template that writes each content as given",
        )
    return starts, ends


def _rebuild(
    shape: str, order: list[_Piece], at: dict[str, int], written: dict[str, str]
) -> tuple[str, dict[str, int], dict[str, int]]:
    """`shape` with each sentinel replaced by its text (or by `written[sentinel]`), and where each one went."""
    rebuilt, starts, ends, prev, length = [], {}, {}, 0, 0
    for p in order:
        text = written.get(p.sentinel, p.text)
        rebuilt.append(shape[prev : at[p.sentinel]])
        length += at[p.sentinel] - prev
        starts[p.sentinel], ends[p.sentinel] = length, length + len(text)
        rebuilt.append(text)
        length += len(text)
        prev = at[p.sentinel] + len(p.sentinel)
    rebuilt.append(shape[prev:])
    return "".join(rebuilt), starts, ends


def _call_span(
    tokenizer: Any,
    text: str,
    kept: list[dict],
    k: int,
    tools: list[dict] | None,
    own: list[_Piece],
    pieces: list[_Piece],
    starts: dict[str, int],
    ends: dict[str, int],
    where: str,
) -> tuple[int, int]:
    """A tool-calling turn: from the end of its generation prompt (the template's assistant header) to the
    end-of-turn token after its calls; what lies between must parse back into the message's calls."""
    name, i = template_name(tokenizer), own[0].message if own else k
    prompt = render(tokenizer, kept[:k], where, add_generation_prompt=True, tools=tools)
    if not text.startswith(prompt):
        raise _refuse(
            name,
            where,
            f"renders the conversation before messages[{i}] (a tool call) differently when it ends there",
            "the call's tokens cannot be located exactly; use a template whose generation prompt is a prefix of "
            "the conversation (Mistral's moves the tools and system prompt to the last user turn: one user turn)",
        )
    start, last = len(prompt), max(ends[p.sentinel] for p in own)
    later = [
        starts[p.sentinel] for p in pieces if p.sentinel in starts and p.message != i and starts[p.sentinel] >= start
    ]
    eot = next((tokenizer.convert_ids_to_tokens(t) for t in end_of_turn_ids(tokenizer)), "")
    stop = text.find(eot, last, min(later, default=len(text))) if eot else -1
    if stop < 0:
        raise _refuse(
            name,
            where,
            f"writes no end-of-turn token after the tool calls of messages[{i}]",
            "use a template that closes each assistant turn with a special token, so the model learns to stop",
        )
    calls = [ToolCall(c["function"]["name"], c["function"]["arguments"]) for c in kept[k]["tool_calls"]]
    parsed = parse_tool_calls(text[start:stop], getattr(tokenizer, "chat_template", None))
    if not same_calls(parsed.calls, calls):
        raise _refuse(
            name,
            where,
            f"writes the tool calls of messages[{i}] in a form tuneforge cannot parse back "
            f"({parsed.reason or 'other calls'}: {text[start:stop][:60]!r})",
            "use a template with a supported tool-call syntax (<tool_call> blocks, Llama 3.1 JSON, Mistral "
            "[TOOL_CALLS]) or model.chat_template: chatml, so the service can read what the model learns to write",
        )
    return start, stop + len(eot)


def _turn_span(
    tokenizer: Any, text: str, own: list[_Piece], starts: dict[str, int], ends: dict[str, int], where: str, i: int
) -> tuple[int, int]:
    """From the first character of the content (its `<think>` when the template writes the reasoning)
    to the end of the end-of-turn token right after it."""
    name = template_name(tokenizer)
    first, last = own[0], own[-1]
    start = starts[first.sentinel]
    if first.reasoning:
        opened = _THINK_OPEN.search(text, 0, start)
        if opened is None:
            raise _refuse(
                name,
                where,
                f"writes the reasoning of messages[{i}] without an opening <think>",
                "use a template that writes reasoning inside <think>...</think>, or remove it",
            )
        start = opened.start()
    end = ends[last.sentinel]
    if not last.text:
        raise _refuse(
            name, where, f"messages[{i}] (assistant) is empty", "write the answer, or give the message weight 0"
        )
    for skip in dict.fromkeys((last.trail, "")):  # the content's own trailing whitespace, when the template kept it
        if text.startswith(skip, end):
            token = _end_of_turn(tokenizer, text, end + len(skip))
            if token:
                return start, end + len(skip) + len(token)
    raise _refuse(
        name,
        where,
        f"writes no end-of-turn token right after messages[{i}] (assistant): {text[end : end + 20]!r} follows",
        "use a template that closes each assistant turn with a special token (e.g. <|im_end|>), "
        "so the model learns to stop",
    )


_ADDED: weakref.WeakKeyDictionary[Any, list[str]] = weakref.WeakKeyDictionary()


def _end_of_turn(tokenizer: Any, text: str, pos: int) -> str:
    """The longest added (special) token that starts at `pos`, or ''."""
    try:
        tokens = _ADDED[tokenizer]
    except (KeyError, TypeError):
        tokens = sorted(
            {t.content for t in tokenizer.added_tokens_decoder.values()} | set(tokenizer.all_special_tokens),
            key=len,
            reverse=True,
        )
        try:
            _ADDED[tokenizer] = tokens
        except TypeError:
            pass
    return next((t for t in tokens if t and text.startswith(t, pos)), "")


def _refuse(name: str, where: str, what: str, fix: str) -> DataError:
    return DataError(f"{name} {what.split(' (')[0]}", [Problem(where, f"{name} {what}", fix)])
