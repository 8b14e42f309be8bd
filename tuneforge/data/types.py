"""The in-memory example types every reader produces and everything downstream consumes.

Formats are readers at the edge: nothing after `data.readers` knows which file format an
example came from. `metadata` carries user fields (product line, language, source line
number...) used for slices, lineage and error messages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[str, ...] = ("system", "user", "assistant", "tool")


@dataclass
class ToolCall:
    """One function call an assistant message makes: the name and the arguments as parsed JSON (an object)."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None  # the call id results answer with (OpenAI's tool_call_id); None when the data has none

    def to_dict(self) -> dict[str, Any]:
        """OpenAI's layout (arguments as a JSON string), what the readers read back."""
        d: dict[str, Any] = {"id": self.id} if self.id is not None else {}
        args = json.dumps(self.arguments, ensure_ascii=False)
        return {**d, "type": "function", "function": {"name": self.name, "arguments": args}}


@dataclass
class Message:
    role: str
    content: str  # "" for an assistant message that only calls tools
    # OpenAI's per-message weight: 0 turns the loss off for this assistant message.
    weight: float | None = None
    tool_calls: list[ToolCall] | None = None  # assistant: the functions it calls
    tool_call_id: str | None = None  # tool: the call this message is the result of
    name: str | None = None  # tool: the function whose result this is

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["content"] = self.content or None
            d["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        for key in ("tool_call_id", "name", "weight"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        return d


@dataclass
class Conversation:
    """Chat, prompt/completion, Alpaca and ShareGPT data all become a conversation."""

    messages: list[Message]
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="", compare=False, repr=False)  # "file:line" it was read from; not written out
    tools: list[dict[str, Any]] | None = None  # the functions offered, OpenAI's {"type": "function", "function"}
    parallel_tool_calls: bool | None = None  # OpenAI's flag: False = at most one call per assistant message

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [m.to_dict() for m in self.messages]}
        if self.tools is not None:
            out["tools"] = self.tools
        if self.parallel_tool_calls is not None:
            out["parallel_tool_calls"] = self.parallel_tool_calls
        if self.metadata:
            out["metadata"] = self.metadata
        return out

    @property
    def prompt_messages(self) -> list[Message]:
        """Everything before the final assistant message (what a model is asked)."""
        last = self.last_assistant_index()
        return self.messages[:last] if last is not None else list(self.messages)

    @property
    def reference(self) -> str:
        """The final assistant message: the expected answer (its tool calls in the fallback syntax,
        `<tool_call>` blocks after its text, which `parse_tool_calls(text, "hermes")` reads back)."""
        last = self.last_assistant_index()
        if last is None:
            return ""
        message = self.messages[last]
        if not message.tool_calls:
            return message.content
        from tuneforge.data.tool_calls import render_call  # tool_calls builds on these types

        return "\n".join([message.content] * bool(message.content) + [render_call(c) for c in message.tool_calls])

    def last_assistant_index(self) -> int | None:
        for i in range(len(self.messages) - 1, -1, -1):
            if self.messages[i].role == "assistant":
                return i
        return None


@dataclass
class TextExample:
    """Raw text (pretraining, domain adaptation, MLM)."""

    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, **({"metadata": self.metadata} if self.metadata else {})}


@dataclass
class LabelledExample:
    """Text with a class label (sentiment, intent...)."""

    text: str
    label: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"text": self.text, "label": self.label}
        return {**d, **({"metadata": self.metadata} if self.metadata else {})}


@dataclass
class TokenExample:
    """Pre-tokenized words with one BIO tag each (NER)."""

    tokens: list[str]
    tags: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"tokens": self.tokens, "tags": self.tags}
        return {**d, **({"metadata": self.metadata} if self.metadata else {})}


@dataclass
class PreferencePair:
    """A prompt with a preferred and a rejected answer (DPO)."""

    prompt: list[Message]
    chosen: str
    rejected: str
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="", compare=False, repr=False)  # "file:line" it was read from; not written out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "prompt": [{"role": m.role, "content": m.content} for m in self.prompt],
            "chosen": self.chosen,
            "rejected": self.rejected,
        }
        return {**d, **({"metadata": self.metadata} if self.metadata else {})}


@dataclass
class LabelledAnswer:
    """A prompt with one answer judged desirable or undesirable, unpaired (KTO). Only the kto objective trains
    it: an undesirable answer must never become another objective's target."""

    prompt: list[Message]
    completion: str
    desirable: bool
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="", compare=False, repr=False)  # "file:line" it was read from; not written out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "prompt": [{"role": m.role, "content": m.content} for m in self.prompt],
            "completion": self.completion,
            "label": self.desirable,  # TRL's unpaired layout: read back as KTO data
        }
        return {**d, **({"metadata": self.metadata} if self.metadata else {})}

    def answer_message(self) -> Message:
        return Message("assistant", self.completion)


@dataclass
class PromptExample:
    """A prompt without an answer, and the fields graders read (reinforcement fine-tuning: objective grpo).

    OpenAI's RFT JSONL: `messages` ending in a user turn, plus any top-level fields the grader templates read
    as {{item.answer}}; they are the example's `metadata` (with its `metadata` object's fields, if any).
    """

    prompt: list[Message]
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str = field(default="", compare=False, repr=False)  # "file:line" it was read from; not written out

    @property
    def item(self) -> dict[str, Any]:
        """The example as graders see it: its fields, `reference` "" unless a field gives it."""
        return {"reference": "", **{k: v for k, v in self.metadata.items() if k != "source_line"}}

    def to_dict(self) -> dict[str, Any]:
        fields = {k: v for k, v in self.metadata.items() if k != "source_line"}
        return {"messages": [{"role": m.role, "content": m.content} for m in self.prompt], **fields}


Example = Conversation | TextExample | LabelledExample | TokenExample | PreferencePair | LabelledAnswer | PromptExample
