"""Sequence classification (sentiment, intent, topic): one label per text, accuracy and macro-F1."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tuneforge.data.tokenize import Encoded
from tuneforge.data.types import Example, LabelledExample
from tuneforge.errors import DataError, Problem
from tuneforge.objectives.base import pad_batch, require_examples
from tuneforge.objectives.labels import (
    LabelledObjective,
    LabelSet,
    accuracy_and_macro_f1,
    predict_batches,
    require_fitted,
)


class SequenceClassification(LabelledObjective):
    name = "classification"
    task = "sequence_classification"

    def prepare(self, train_examples: Sequence[Example]) -> None:
        require_examples(
            train_examples,
            LabelledExample,
            "the classification objective needs {text, label} examples",
            "give records with 'text' and 'label'",
        )
        self.labels = LabelSet([ex.label for ex in train_examples])
        if len(self.labels.names) < 2:
            raise DataError(
                "classification needs at least two labels",
                [Problem("data.train", f"only '{self.labels.names[0]}' occurs", "add examples of the other classes")],
            )

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        labels = require_fitted(self.labels, self.name)
        feats = []
        for i, ex in enumerate(examples):
            label = labels.id(ex.label, f"example {i} ({ex.text[:40]!r})")
            ids = tokenizer(ex.text, truncation=True, max_length=max_length)[
                "input_ids"
            ]  # with the model's [CLS]/[SEP]
            full_length = len(tokenizer(ex.text)["input_ids"]) if len(ids) == max_length else len(ids)
            feats.append(Encoded(ids, [label], truncated=full_length > max_length))
        return feats

    def collate(self, features: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        return pad_batch(features, pad_id, per_example=True)

    def logits(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, C)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        logits = self.logits(model, batch)
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum"), int(batch["labels"].numel())

    def metrics(self, model, features: Sequence[Encoded], batch_size: int, pad_id: int, device) -> dict[str, float]:
        predicted, gold = [], []
        for batch, logits in predict_batches(model, self, features, batch_size, pad_id, device):
            predicted += logits.argmax(-1).tolist()
            gold += batch["labels"].tolist()
        return accuracy_and_macro_f1(predicted, gold, len(require_fitted(self.labels, self.name).names))
