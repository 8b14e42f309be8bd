"""Prompts for the cheaper alternatives to fine-tuning: zero-shot, few-shot and RAG.

A builder turns a test conversation into the messages sent to the model (everything up to
the answer). Few-shot examples are earlier user/assistant turns with weight 0, so the loss
of the reference answer is measured on the final answer only; RAG passages go into the
system message. Both stop adding examples/passages before the prompt exceeds its token
budget, so the prompt always leaves room for the answer.

They need a model that generates. An encoder classifier's cheaper alternatives (zero-shot embedding
similarity, kNN, a linear probe) are in `encoder_baselines.py`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from tuneforge.data.tokenize import encode_prompt
from tuneforge.data.types import Conversation, Message
from tuneforge.eval.retrieval import BM25Retriever, Retriever, question_of

RAG_HEADER = "Use these passages if they help answer the question:"


class PromptBuilder(Protocol):
    def __call__(self, conv: Conversation) -> list[Message]: ...


def as_dicts(messages: Sequence[Message]) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in messages]


def prompt_tokens(tokenizer, messages: Sequence[Message]) -> int:
    """Tokens of the prompt as the model sees it (chat template + generation header)."""
    return len(encode_prompt(tokenizer, as_dicts(messages)))


def zero_shot(conv: Conversation) -> list[Message]:
    """The conversation as given: system prompt/instructions and the question."""
    return list(conv.prompt_messages)


def _split_system(messages: list[Message]) -> tuple[list[Message], list[Message]]:
    n = 0
    while n < len(messages) and messages[n].role == "system":
        n += 1
    return messages[:n], messages[n:]


@dataclass
class FewShot:
    """k training conversations as demonstrations, the most similar (or random) ones, within `budget` tokens."""

    pool: list[Conversation]
    tokenizer: object
    k: int = 4
    budget: int = 512
    selection: str = "similar"  # "similar" (BM25 on the questions) | "random"
    seed: int = 0
    _index: BM25Retriever | None = field(default=None, init=False, repr=False)

    def candidates(self, conv: Conversation) -> list[Conversation]:
        depth = min(len(self.pool), 4 * self.k)  # spares for when the best ones do not fit
        if self.selection == "random":
            rng = random.Random(f"{self.seed}:{question_of(conv)}")  # stable per question, independent of order
            return rng.sample(self.pool, depth)
        if self._index is None:
            self._index = BM25Retriever([question_of(c) for c in self.pool])
        return [self.pool[h.index] for h in self._index.search(question_of(conv), depth)]

    def __call__(self, conv: Conversation) -> list[Message]:
        system, rest = _split_system(zero_shot(conv))
        chosen: list[Conversation] = []
        for cand in self.candidates(conv):
            if len(chosen) == self.k:
                break
            trial = chosen + [cand]
            if prompt_tokens(self.tokenizer, self._render(system, trial, rest)) <= self.budget:
                chosen = trial
        return self._render(system, chosen, rest)

    @staticmethod
    def _render(system: list[Message], shots: list[Conversation], rest: list[Message]) -> list[Message]:
        demos = []
        for shot in reversed(shots):  # the most similar demonstration sits right before the question
            demos += [Message("user", question_of(shot), 0.0), Message("assistant", shot.reference, 0.0)]
        return system + demos + rest


@dataclass
class RAG:
    """The top-k retrieved passages in the system message, within `budget` tokens."""

    retriever: Retriever
    tokenizer: object
    k: int = 3
    budget: int = 512

    def __call__(self, conv: Conversation) -> list[Message]:
        system, rest = _split_system(zero_shot(conv))
        instructions = "\n".join(m.content for m in system)
        kept: list[str] = []
        for hit in self.retriever.search(question_of(conv), self.k):
            trial = kept + [hit.text]
            if prompt_tokens(self.tokenizer, self._render(instructions, trial, rest)) <= self.budget:
                kept = trial
        return self._render(instructions, kept, rest)

    @staticmethod
    def _render(instructions: str, passages: list[str], rest: list[Message]) -> list[Message]:
        if not passages:
            return ([Message("system", instructions)] if instructions else []) + rest
        block = "\n".join(f"[{i + 1}] {p}" for i, p in enumerate(passages))
        content = f"{instructions}\n\n{RAG_HEADER}\n{block}" if instructions else f"{RAG_HEADER}\n{block}"
        return [Message("system", content)] + rest
