"""Tokenization for training: chat template + label masks, raw-text packing, and the row
packing of whole examples used by `train.packing`.

Assistant-only labels are found at the string level by `chat_spans` (one rendering with
the real contents, one with a sentinel per content: right by construction for any template,
checked, refused with file:line when they cannot be located); the fast tokenizer's offsets
then mark the tokens in those spans. No {% generation %} markers are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.data.chat_spans import (
    SYSTEM_PROMPT_POLICIES,
    apply_system_prompt,
    chat_spans,
    render,
    template_name,
    where_of,
)
from tuneforge.data.tool_calls import template_messages
from tuneforge.data.types import Conversation
from tuneforge.errors import DataError, Problem

IGNORE = -100  # label of tokens that carry no loss
__all__ = [
    "IGNORE",
    "SYSTEM_PROMPT_POLICIES",
    "Encoded",
    "assistant_spans",
    "document_blocks",
    "encode_conversation",
    "encode_prompt",
    "pack_rows",
    "pack_texts",
]


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def _messages(conv: Conversation) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in conv.messages]


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False, where: str = "a conversation") -> str:
    return render(tokenizer, messages, where, add_generation_prompt)


def assistant_spans(tokenizer, conv: Conversation, system_prompt: str = "keep") -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss (content + end-of-turn token; a tool
    call as the template writes it + end-of-turn). Tools and tool calls are rendered by `data.tool_calls`:
    the model's template when it supports tools, else the fallback; tool results and schemas carry no loss."""
    messages, tools = template_messages(conv.messages, conv.tools, getattr(tokenizer, "chat_template", None))
    weights = iter(m.weight for m in conv.messages if m.role == "assistant")  # the fallback keeps assistant turns
    trained = {i for i, m in enumerate(messages) if m["role"] == "assistant" and next(weights) != 0}
    found = chat_spans(tokenizer, messages, trained, where_of(conv), system_prompt, tools)
    return found.text, found.spans


def encode_conversation(tokenizer, conv: Conversation, max_length: int, system_prompt: str = "keep") -> Encoded:
    """Token ids and labels (-100 outside assistant messages with weight != 0)."""
    text, spans = assistant_spans(tokenizer, conv, system_prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for s, e in spans:
        for k in _tokens_in(text, offsets, s, e, tokenizer, conv):
            labels[k] = ids[k]
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated)


def _tokens_in(text: str, offsets, s: int, e: int, tokenizer, conv: Conversation) -> list[int]:
    """Indices of the tokens inside characters [s, e). A token that joins template whitespace to the
    first character of the answer (Mistral's " " + "Hello" -> " Hello") is the answer's; any other token
    across a boundary cannot be labelled exactly and is refused."""
    inside = []
    for k, (a, b) in enumerate(offsets):
        if b <= s or a >= e:
            continue
        if s <= a and b <= e or (a < s and b <= e and text[a:s].isspace()):
            inside.append(k)
            continue
        raise DataError(
            f"{template_name(tokenizer)}: a token crosses the edge of an assistant message",
            [
                Problem(
                    where_of(conv),
                    f"token {text[a:b]!r} (characters {a}-{b}) spans the edge of the trained text {text[s:e][:40]!r}",
                    "the assistant tokens cannot be located exactly with this tokenizer and template; "
                    "use a template that "
                    "separates turns with special tokens",
                )
            ],
        )
    return inside


def encode_prompt(tokenizer, messages: list[dict], system_prompt: str = "keep", where: str = "the prompt") -> list[int]:
    """Token ids of a prompt ending with the assistant generation header (the template's own)."""
    kept, _, _ = apply_system_prompt(messages, system_prompt, where)
    text = _render(tokenizer, kept, add_generation_prompt=True, where=where)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pack_texts(tokenizer, texts: list[str], block_size: int) -> list[Encoded]:
    """Concatenate documents (separated by EOS) and cut into full blocks for causal-LM training.

    The tail shorter than one block is dropped, as in the usual `group_texts` recipe.
    """
    eos = _end_of_text(tokenizer)
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        stream.append(eos)
    blocks = len(stream) // block_size
    return [
        Encoded(stream[i * block_size : (i + 1) * block_size], stream[i * block_size : (i + 1) * block_size])
        for i in range(blocks)
    ]


def document_blocks(tokenizer, texts: list[str], block_size: int) -> list[Encoded]:
    """One feature per document (+ end-of-text), cut into `block_size` pieces only where it is longer.

    The batcher packs these whole into rows, each with its own positions and attention block, so a chat's question,
    passages and answer are seen together (with `pack_texts` a third of 200-token chats in 256-token blocks would be
    cut apart). Where a document is cut, the first token of each later piece is not predicted (as with any feature).
    """
    eos = _end_of_text(tokenizer)
    out: list[Encoded] = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
        for start in range(0, len(ids), block_size):
            piece = ids[start : start + block_size]
            out.append(Encoded(piece, list(piece)))
    return out


def _end_of_text(tokenizer) -> int:
    vocab = tokenizer.get_vocab()
    return tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in vocab else tokenizer.eos_token_id


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Group item indices into rows of at most `capacity` tokens, computing as few tokens as possible.

    Rows are padded to the longest row, so the cost is rows x width: first-fit decreasing
    is tried for every useful width between the longest item and `capacity` (the widths
    that split the total evenly into 1, 2, ... rows) and the cheapest layout is kept
    (ties: the narrower one, whose attention squares are smaller). Deterministic.
    """
    longest, total = max(lengths), sum(lengths)
    widths = {min(max(longest, -(-total // r)), max(capacity, longest)) for r in range(1, len(lengths) + 1)}
    best: list[list[int]] | None = None
    best_cost = (0, 0)
    for width in sorted(widths):
        rows = _first_fit_decreasing(lengths, width)
        used = max(sum(lengths[i] for i in row) for row in rows)
        cost = (len(rows) * used, used)
        if best is None or cost < best_cost:
            best, best_cost = rows, cost
    return best


def _first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Equal lengths keep their input order; an item longer than `capacity` gets a row of its own."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
        slot = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
        if slot is None:
            rows.append([i])
            room.append(capacity - lengths[i])
        else:
            rows[slot].append(i)
            room[slot] -= lengths[i]
    return rows
