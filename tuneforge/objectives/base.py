"""The objective contract and the pieces every token-level objective shares."""

from __future__ import annotations

from typing import Protocol, Sequence

import torch
import torch.nn.functional as F

from tuneforge.data.tokenize import IGNORE, Encoded
from tuneforge.data.types import Example


class Objective(Protocol):
    name: str
    task: str  # a key of models.loading.MODEL_CLASSES: which model head is loaded

    def model_kwargs(self, examples: Sequence[Example]) -> dict:
        """Extra `from_pretrained` kwargs the head needs (num_labels, id2label...)."""

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        """Examples -> token features (stable order; may drop nothing silently)."""

    def collate(self, features: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        """Features -> one padded batch."""

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Summed loss over the batch and the number of tokens/examples it sums over.

        Returning a sum lets the recipe normalise by the token count of the whole optimizer
        step, so gradient accumulation gives the same update as one large batch.
        """


def pad_batch(features: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest feature: input_ids, attention_mask, labels (B, T)."""
    width = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, f in enumerate(features):
        n = len(f.input_ids)
        ids[row, :n] = torch.tensor(f.input_ids)
        labels[row, :n] = torch.tensor(f.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def causal_lm_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy summed over labelled positions."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
    targets = batch["labels"][:, 1:]  # (B, T-1): token t is predicted at position t-1
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE, reduction="sum")
    return loss, int((targets != IGNORE).sum())
