"""Tokenization for training: chat template + label masks, raw-text packing, and the row
packing of whole examples used by `train.packing`.

Assistant-only labels are found at the string level: rendering the conversation up to
message i (with the generation prompt) and up to message i+1 gives the character span of
assistant message i inside the full rendering; the fast tokenizer's offsets then mark the
tokens in that span. This works with any chat template whose renderings of prefixes are
prefixes of the full rendering (all common templates), and needs no {% generation %} markers.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuneforge.data.types import Conversation
from tuneforge.errors import DataError, Problem

IGNORE = -100  # label of tokens that carry no loss


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, conv: Conversation) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that carry loss."""
    msgs = [{"role": m.role, "content": m.content} for m in conv.messages]
    text = _render(tokenizer, msgs)
    spans = []
    for i, m in enumerate(conv.messages):
        if m.role != "assistant" or m.weight == 0:
            continue
        start = len(_render(tokenizer, msgs[:i], add_generation_prompt=True)) if i else 0
        upto = _render(tokenizer, msgs[: i + 1])
        end = len(upto)
        if not text.startswith(upto):
            raise DataError("the chat template does not render conversations prefix by prefix",
                            [Problem("model chat template", "cannot locate assistant tokens", "use a template whose prefixes render as prefixes")])
        spans.append((start, end))
    return text, spans


def encode_conversation(tokenizer, conv: Conversation, max_length: int) -> Encoded:
    """Token ids and labels (-100 outside assistant messages with weight != 0)."""
    text, spans = assistant_spans(tokenizer, conv)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE] * len(ids)
    for k, (tok_start, _tok_end) in enumerate(offsets):
        if any(s <= tok_start < e for s, e in spans):
            labels[k] = ids[k]
    truncated = len(ids) > max_length
    return Encoded(ids[:max_length], labels[:max_length], truncated)


def encode_prompt(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a prompt ending with the assistant generation header."""
    text = _render(tokenizer, messages, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def pack_texts(tokenizer, texts: list[str], block_size: int) -> list[Encoded]:
    """Concatenate documents (separated by EOS) and cut into full blocks for causal-LM training.

    The tail shorter than one block is dropped, as in the usual `group_texts` recipe.
    """
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tokenizer.get_vocab() else tokenizer.eos_token_id
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer(t, add_special_tokens=False)["input_ids"])
        stream.append(eos)
    blocks = len(stream) // block_size
    return [Encoded(stream[i * block_size:(i + 1) * block_size], stream[i * block_size:(i + 1) * block_size]) for i in range(blocks)]


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
