"""Content keys and hashes of examples: what "the same example" means for dedup and leaks.

The key is the example's text content (roles kept, metadata ignored), normalised so that
case, Unicode form and whitespace differences do not hide a duplicate.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata

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

_SPACES = re.compile(r"\s+")


def content_text(example: Example) -> str:
    """All the text of an example, roles included, in a stable layout."""
    if isinstance(example, Conversation):  # tool calls and tools count: other arguments are another example
        calls = [
            f" {json.dumps([c.to_dict()['function'] for c in m.tool_calls])}" if m.tool_calls else ""
            for m in example.messages
        ]
        text = "\n".join(f"{m.role}: {m.content}{c}" for m, c in zip(example.messages, calls))
        return text + (f"\ntools: {json.dumps(example.tools, sort_keys=True)}" if example.tools else "")
    if isinstance(example, PreferencePair):
        prompt = "\n".join(f"{m.role}: {m.content}" for m in example.prompt)
        return f"{prompt}\nchosen: {example.chosen}\nrejected: {example.rejected}"
    if isinstance(example, LabelledAnswer):  # one answer judged twice is a duplicate (a conflict if judged apart)
        return "\n".join(f"{m.role}: {m.content}" for m in [*example.prompt, example.answer_message()])
    if isinstance(example, LabelledExample):
        return example.text  # the same text with two labels is a duplicate (and a conflict)
    if isinstance(example, TextExample):
        return example.text
    if isinstance(example, TokenExample):
        return " ".join(example.tokens)
    if isinstance(example, PromptExample):  # an RFT prompt: the same question with another answer key differs
        prompt = "\n".join(f"{m.role}: {m.content}" for m in example.prompt)
        return f"{prompt}\nitem: {sorted(example.item.items(), key=lambda kv: kv[0])!r}"
    raise TypeError(f"not an example: {type(example).__name__}")


def normalise(text: str) -> str:
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def content_hash(example: Example) -> int:
    """64-bit hash of the normalised content (collisions: ~1 in 10^19 per pair)."""
    digest = hashlib.blake2b(normalise(content_text(example)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little", signed=True)
