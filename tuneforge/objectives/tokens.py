"""Token classification (NER): one BIO tag per word, scored with entity-level F1.

Words are split into sub-word tokens; the first sub-token of each word carries the word's
tag and the others are ignored (-100), the usual convention (BERT paper, HF examples).
Entity F1 is CoNLL's: an entity counts only when its type and exact span both match.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tuneforge.data.tokenize import IGNORE, Encoded
from tuneforge.data.types import Example, TokenExample
from tuneforge.objectives.base import pad_batch, require_examples
from tuneforge.objectives.labels import LabelledObjective, LabelSet, predict_batches, require_fitted


def entity_spans(tags: Sequence[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) of every entity in a BIO sequence; a stray I- starts an entity (conlleval)."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate(list(tags) + ["O"]):
        continues = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not continues:
            spans.add((kind, start, i))
            start, kind = None, None
        if tag.startswith("B-") or (tag.startswith("I-") and not continues):
            start, kind = i, tag[2:]
    return spans


def entity_f1(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    tp = n_pred = n_gold = 0
    for p, g in zip(predicted, gold):
        ps, gs = entity_spans(p), entity_spans(g)
        tp, n_pred, n_gold = tp + len(ps & gs), n_pred + len(ps), n_gold + len(gs)
    precision, recall = tp / max(n_pred, 1), tp / max(n_gold, 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1}


class TokenClassification(LabelledObjective):
    name = "tokens"
    task = "token_classification"

    def prepare(self, train_examples: Sequence[Example]) -> None:
        require_examples(
            train_examples,
            TokenExample,
            "the tokens objective needs {tokens, tags} examples",
            "give records with 'tokens' and BIO 'tags'",
        )
        self.labels = LabelSet([t for ex in train_examples for t in ex.tags] + ["O"])

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        labels = require_fitted(self.labels, self.name)
        feats = []
        for i, ex in enumerate(examples):
            tag_ids = [labels.id(t, f"example {i} tags[{k}]") for k, t in enumerate(ex.tags)]
            enc = tokenizer(ex.tokens, is_split_into_words=True, truncation=True, max_length=max_length)
            word_ids = enc.word_ids()
            targets, seen = [], set()
            for w in word_ids:  # first sub-token of each word is labelled
                targets.append(tag_ids[w] if w is not None and w not in seen else IGNORE)
                seen.add(w)
            feats.append(Encoded(enc["input_ids"], targets, truncated=len(seen - {None}) < len(ex.tokens)))
        return feats

    def collate(self, features: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        return pad_batch(features, pad_id)

    def logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, C)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = self.logits(model, batch)
        loss = F.cross_entropy(
            logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE, reduction="sum"
        )
        return loss, int((batch["labels"] != IGNORE).sum())

    def metrics(self, model, features: Sequence[Encoded], batch_size: int, pad_id: int, device) -> dict[str, float]:
        names = require_fitted(self.labels, self.name).names
        predicted, gold = [], []
        for batch, logits in predict_batches(model, self, features, batch_size, pad_id, device):
            for row_pred, row_gold in zip(logits.argmax(-1), batch["labels"]):
                keep = row_gold != IGNORE  # one position per (kept) word
                predicted.append([names[i] for i in row_pred[keep].tolist()])
                gold.append([names[i] for i in row_gold[keep].tolist()])
        correct = sum(p == g for ps, gs in zip(predicted, gold) for p, g in zip(ps, gs))
        return {**entity_f1(predicted, gold), "tag_accuracy": correct / max(sum(len(g) for g in gold), 1)}
