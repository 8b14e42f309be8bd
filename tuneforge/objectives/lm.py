"""Language-model objectives: supervised chat (sft) and causal-LM pretraining (clm)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tuneforge.data.chat_spans import render, where_of
from tuneforge.data.tokenize import Encoded, document_blocks, encode_conversation, pack_texts
from tuneforge.data.tool_calls import template_messages
from tuneforge.data.types import Conversation, Example, TextExample
from tuneforge.errors import DataError, Problem
from tuneforge.objectives.base import causal_lm_loss, pack_batch, pad_batch, require_examples


class _NextTokenObjective:
    """What sft and clm share: next-token loss on a causal LM, padded or packed batches."""

    task = "causal_lm"
    collate = staticmethod(pad_batch)
    pack = staticmethod(pack_batch)

    def __init__(self, fused_loss: str = "auto") -> None:
        self.fused_loss = fused_loss  # train.fused_loss: auto | on | off

    def loss(self, model, batch: dict) -> tuple:
        return causal_lm_loss(model, batch, self.fused_loss)

    def prepare(self, train_examples: Sequence[Example]) -> None:
        pass  # encode checks the example types

    def model_kwargs(self, examples: Sequence[Example]) -> dict:
        return {}

    def metrics(self, model, features, batch_size: int, pad_id: int, device) -> dict[str, float]:
        return {}  # the validation loss (per supervised token) is the metric


class SupervisedChat(_NextTokenObjective):
    """Instruction tuning: loss on assistant tokens only (per-message weight 0 honoured)."""

    name = "sft"

    def __init__(self, system_prompt: str = "keep", fused_loss: str = "auto") -> None:
        super().__init__(fused_loss)
        self.system_prompt = system_prompt  # data.system_prompt: keep | fold | drop

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        require_examples(
            examples,
            Conversation,
            "the sft objective needs chat examples",
            "use chat, prompt/completion, Alpaca or ShareGPT data, or objective: clm",
        )
        feats, refused = [], []
        for ex in examples:  # every refused record is listed (up to 20), not only the first
            try:
                feats.append(encode_conversation(tokenizer, ex, max_length, self.system_prompt))
            except DataError as exc:
                refused.append(exc)
        if refused:
            raise DataError(
                f"{len(refused)} of {len(examples)} conversation(s) cannot be trained: {refused[0].summary}",
                [p for exc in refused[:20] for p in exc.problems],
            )
        dropped = (
            sum(any(m.role == "system" for m in ex.messages) for ex in examples) if self.system_prompt == "drop" else 0
        )
        if dropped:
            logging.getLogger("tuneforge").warning(
                "data.system_prompt: drop removed the system prompt of %d conversation(s)", dropped
            )
        if not any(label != -100 for f in feats for label in f.labels):
            raise DataError(
                "no example has a trainable assistant token after truncation",
                [
                    Problem(
                        "data.train",
                        "every assistant message was cut off or has weight 0",
                        "raise model.max_length or check the weights",
                    )
                ],
            )
        return feats


class CausalLM(_NextTokenObjective):
    """Pretraining / domain adaptation: every token of raw text, in full blocks or whole documents (text_blocks)."""

    name = "clm"

    def __init__(self, fused_loss: str = "auto", text_blocks: str = "stream") -> None:
        super().__init__(fused_loss)
        self.text_blocks = text_blocks  # data.text_blocks: stream (group_texts) | documents

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        require_examples(
            examples,
            (TextExample, Conversation),
            "the clm objective needs text or chat examples",
            "give text or chat records, or pick the objective these examples are for",
        )
        texts = [
            ex.text if isinstance(ex, TextExample) else _render_chat(tokenizer, ex)
            for ex in examples
            if isinstance(ex, (TextExample, Conversation))
        ]
        blocks = (document_blocks if self.text_blocks == "documents" else pack_texts)(tokenizer, texts, max_length)
        if not blocks:
            raise DataError(
                "not enough text for one training block",
                [
                    Problem(
                        "data.train",
                        f"fewer than model.max_length={max_length} tokens",
                        "add text or lower model.max_length",
                    )
                ],
            )
        return blocks


def _render_chat(tokenizer, conv: Conversation) -> str:
    """A chat as its template renders it, tools and tool calls included (`data.tool_calls`)."""
    messages, tools = template_messages(conv.messages, conv.tools, getattr(tokenizer, "chat_template", None))
    return render(tokenizer, messages, where_of(conv), tools=tools)
