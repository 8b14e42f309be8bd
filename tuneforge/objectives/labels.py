"""Pieces shared by the labelled objectives: the label vocabulary, padding, and metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tuneforge.data.tokenize import Encoded
from tuneforge.data.types import Example
from tuneforge.errors import DataError, Problem


class LabelSet:
    """Label names <-> ids, fixed from the training data (sorted, so a resumed run gets the same ids)."""

    def __init__(self, names: Sequence[str]):
        self.names = sorted(set(names))
        self.ids = {name: i for i, name in enumerate(self.names)}

    def id(self, name: str, where: str) -> int:
        if name not in self.ids:
            raise DataError(
                f"label '{name}' does not occur in the training data",
                [
                    Problem(
                        where,
                        f"unknown label '{name}'",
                        f"known labels: {self.names[:20]}; add examples of it to data.train",
                    )
                ],
            )
        return self.ids[name]

    def model_kwargs(self) -> dict:
        """What the new head needs: its width and the names saved in config.json (id2label)."""
        return {"num_labels": len(self.names), "id2label": dict(enumerate(self.names)), "label2id": dict(self.ids)}


def require_fitted(labels: LabelSet | None, objective: str) -> LabelSet:
    if labels is None:
        raise RuntimeError(
            f"{objective}: prepare(train_examples) must run before encode"
        )  # a programming error, not a user's
    return labels


def accuracy_and_macro_f1(predicted: list[int], gold: list[int], n_labels: int) -> dict[str, float]:
    """Accuracy and macro-F1 (unweighted mean of per-class F1 over classes present in gold or predictions)."""
    accuracy = sum(p == g for p, g in zip(predicted, gold)) / max(len(gold), 1)
    f1s = []
    for c in range(n_labels):
        tp = sum(p == c and g == c for p, g in zip(predicted, gold))
        fp = sum(p == c and g != c for p, g in zip(predicted, gold))
        fn = sum(p != c and g == c for p, g in zip(predicted, gold))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": accuracy, "macro_f1": sum(f1s) / max(len(f1s), 1)}


@torch.no_grad()
def predict_batches(model, objective, features: Sequence[Encoded], batch_size: int, pad_id: int, device):
    """Yield (batch on device, logits) over `features` in eval mode."""
    model.eval()
    for i in range(0, len(features), batch_size):
        batch = {k: v.to(device) for k, v in objective.collate(features[i : i + batch_size], pad_id).items()}
        yield batch, objective.logits(model, batch)


class LabelledObjective:
    """What the labelled objectives (classification, tokens) share: a label set fixed from the
    training data in `prepare`, which also sizes the model's new head."""

    name: str

    def __init__(self) -> None:
        self.labels: LabelSet | None = None

    def model_kwargs(self, examples: Sequence[Example]) -> dict:
        return require_fitted(self.labels, self.name).model_kwargs()
