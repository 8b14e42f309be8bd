"""Count tokens of examples the way training will see them (chat template included).

Tokenizers come from `tuneforge.models.loading.load_tokenizer`: named models such as
'demo', hub ids, run directories, or any Hugging Face tokenizer folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.data.tool_calls import template_messages
from tuneforge.data.types import (
    Conversation,
    Example,
    LabelledAnswer,
    LabelledExample,
    PreferencePair,
    PromptExample,
    TextExample,
    TokenExample,
)


def load_tokenizer(name_or_path: str | Path) -> Any:
    """A tokenizer for a model name ('demo', hub id), a run directory or a local HF folder."""
    from tuneforge.models.loading import load_tokenizer as load  # imports torch/transformers: only when needed

    return load(name_or_path)


def _ids(encoded: Any) -> list[int]:
    """apply_chat_template returns a list or (transformers 5) a BatchEncoding."""
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    return list(encoded)


def count_tokens(tokenizer: Any, example: Example) -> int:
    """Tokens the model reads for one example (the longest side for preference pairs)."""
    if isinstance(example, Conversation):  # tools and tool calls as training renders them
        template = getattr(tokenizer, "chat_template", None)
        return _chat_tokens(tokenizer, *template_messages(example.messages, example.tools, template))
    if isinstance(example, PreferencePair):
        prompt = [{"role": m.role, "content": m.content} for m in example.prompt]
        return max(
            _chat_tokens(tokenizer, prompt + [{"role": "assistant", "content": a}])
            for a in (example.chosen, example.rejected)
        )
    if isinstance(example, LabelledAnswer):
        messages = [*example.prompt, example.answer_message()]
        return _chat_tokens(tokenizer, [{"role": m.role, "content": m.content} for m in messages])
    if isinstance(example, (TextExample, LabelledExample)):
        return len(tokenizer(example.text)["input_ids"])
    if isinstance(example, TokenExample):
        return len(tokenizer(example.tokens, is_split_into_words=True)["input_ids"])
    if isinstance(example, PromptExample):  # an RFT prompt: its answers are sampled in training, not in the file
        return _chat_tokens(tokenizer, [{"role": m.role, "content": m.content} for m in example.prompt])
    raise TypeError(f"not an example: {type(example).__name__}")


def _chat_tokens(tokenizer: Any, messages: list[dict], tools: list[dict] | None = None) -> int:
    if getattr(tokenizer, "chat_template", None):
        extra = {"tools": tools} if tools else {}
        return len(_ids(tokenizer.apply_chat_template(messages, tokenize=True, **extra)))
    # No template: role-tagged lines are a fair stand-in for what a template adds.
    return len(tokenizer("\n".join(f"{m['role']}: {m['content']}" for m in messages))["input_ids"])


def context_window(tokenizer: Any, default: int = 2048) -> int:
    """The tokenizer's model_max_length, unless it is HF's 'unset' sentinel (~1e30)."""
    n = getattr(tokenizer, "model_max_length", None)
    return int(n) if isinstance(n, int) and 0 < n < 10_000_000 else default
