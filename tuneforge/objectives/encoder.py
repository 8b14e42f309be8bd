"""Encoder pretraining objectives: masked language modelling (mlm) and next-sentence prediction (nsp).

mlm masks dynamically (RoBERTa): every batch draws fresh positions, 15% of the real tokens,
of which 80% become [MASK], 10% a random token and 10% stay (BERT's recipe), from the
torch RNG the recipe seeds and checkpoints. nsp pairs each sentence with its successor or,
half of the time, with a sentence of another document (BERT's IsNext / NotNext).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tuneforge.data.tokenize import IGNORE, Encoded
from tuneforge.data.types import Conversation, Example, TextExample
from tuneforge.errors import DataError, Problem
from tuneforge.objectives.base import pad_batch, require_examples
from tuneforge.objectives.labels import accuracy_and_macro_f1, predict_batches

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _texts(examples: Sequence[Example], objective: str) -> list[str]:
    require_examples(
        examples,
        (TextExample, Conversation),
        f"the {objective} objective needs text or chat examples",
        "give text or chat records, or pick the objective these examples are for",
    )
    texts = [
        ex.text if isinstance(ex, TextExample) else "\n".join(m.content for m in ex.messages)
        for ex in examples
        if isinstance(ex, (TextExample, Conversation))
    ]
    if not texts:
        raise DataError(
            f"the {objective} objective needs raw text",
            [Problem("data.train", "no text or chat examples", "give records with a 'text' field")],
        )
    return texts


def _needs_mask_token(tokenizer, objective: str) -> None:
    if tokenizer.mask_token_id is None or tokenizer.cls_token_id is None:
        raise DataError(
            f"the {objective} objective needs an encoder tokenizer with [MASK] and [CLS]",
            [
                Problem(
                    "model.name", "the tokenizer has no mask/cls token", "use an encoder such as minilm or a BERT model"
                )
            ],
        )


class _EncoderText:
    """What mlm and nsp share: raw text in, no extra model arguments."""

    name: str

    def prepare(self, train_examples: Sequence[Example]) -> None:
        _texts(train_examples, self.name)

    def model_kwargs(self, examples: Sequence[Example]) -> dict:
        return {}


class MaskedLM(_EncoderText):
    name = "mlm"
    task = "masked_lm"

    def __init__(self, probability: float = 0.15) -> None:
        self.probability = probability  # train.mlm_probability
        self.mask_id: int | None = None
        self.vocab_size = 0

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        """Each document cut into [CLS] chunk [SEP] blocks of at most max_length tokens."""
        _needs_mask_token(tokenizer, self.name)
        self.mask_id, self.vocab_size = tokenizer.mask_token_id, len(tokenizer)
        body = max_length - 2
        feats = []
        for text in _texts(examples, self.name):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            for i in range(0, len(ids), body):
                block = [tokenizer.cls_token_id, *ids[i : i + body], tokenizer.sep_token_id]
                # labels mark the maskable positions (not [CLS]/[SEP]); collate picks which are masked
                feats.append(Encoded(block, [IGNORE, *block[1:-1], IGNORE]))
        return feats

    def collate(self, features: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        batch = pad_batch(features, pad_id)
        ids, maskable = batch["input_ids"], batch["labels"] != IGNORE  # (B, T)
        chosen = maskable & (torch.rand(ids.shape) < self.probability)
        labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
        roll = torch.rand(ids.shape)
        ids = torch.where(chosen & (roll < 0.8), torch.full_like(ids, self.mask_id), ids)
        random_ids = torch.randint(self.vocab_size, ids.shape)
        ids = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, ids)
        return {"input_ids": ids, "attention_mask": batch["attention_mask"], "labels": labels}

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE, reduction="sum"
        )
        return loss, int((batch["labels"] != IGNORE).sum())

    def metrics(self, model, features, batch_size: int, pad_id: int, device) -> dict[str, float]:
        return {}  # the validation loss is the metric (perplexity = exp(val_loss))


@dataclass
class PairEncoded(Encoded):
    token_type_ids: list[int] = field(default_factory=list)


class NextSentence(_EncoderText):
    name = "nsp"
    task = "next_sentence"  # the NSP head alone: BERT's pretraining class would also compute (B, T, vocab) MLM logits

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        _needs_mask_token(tokenizer, self.name)
        docs = [s for s in (_SENTENCE_END.split(t.strip()) for t in _texts(examples, self.name)) if s]
        if len(docs) < 2 or not any(len(d) > 1 for d in docs):
            raise DataError(
                "nsp needs at least two documents and one with two sentences",
                [Problem("data.train", "not enough sentences to pair", "give longer texts, several documents")],
            )
        rng = random.Random(self.seed)  # fixed pairs: the validation score is comparable between runs
        feats = []
        for d, doc in enumerate(docs):
            for i in range(len(doc) - 1):
                is_next = rng.random() < 0.5
                other = rng.choice([k for k in range(len(docs)) if k != d])
                second = doc[i + 1] if is_next else rng.choice(docs[other])
                enc = tokenizer(doc[i], second, truncation=True, max_length=max_length)
                feats.append(PairEncoded(enc["input_ids"], [0 if is_next else 1], token_type_ids=enc["token_type_ids"]))
        return feats

    def collate(self, features: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        batch = pad_batch(features, pad_id, per_example=True)
        types = torch.zeros_like(batch["input_ids"])
        for row, f in enumerate(features):
            types[row, : len(f.token_type_ids)] = torch.tensor(f.token_type_ids)
        return {**batch, "token_type_ids": types}

    def logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], token_type_ids=batch["token_type_ids"]
        )
        return out.logits  # (B, 2): 0 = IsNext, 1 = NotNext

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return F.cross_entropy(self.logits(model, batch).float(), batch["labels"], reduction="sum"), int(
            batch["labels"].numel()
        )

    def metrics(self, model, features, batch_size: int, pad_id: int, device) -> dict[str, float]:
        predicted, gold = [], []
        for batch, logits in predict_batches(model, self, features, batch_size, pad_id, device):
            predicted += logits.argmax(-1).tolist()
            gold += batch["labels"].tolist()
        return {"nsp_accuracy": accuracy_and_macro_f1(predicted, gold, 2)["accuracy"]}
