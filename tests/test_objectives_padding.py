"""One padding function for every objective: token labels (B, T) or one label per example (B,)."""

from __future__ import annotations

import torch

from tuneforge.data.tokenize import IGNORE, Encoded
from tuneforge.objectives.base import pad_batch

FEATURES = [Encoded(input_ids=[5, 6, 7], labels=[IGNORE, 6, 7]), Encoded(input_ids=[8], labels=[8])]


def test_pad_batch_right_pads_token_labels_with_ignore():
    batch = pad_batch(FEATURES, pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]


def test_pad_batch_per_example_keeps_one_label_per_row():
    batch = pad_batch(
        [Encoded(input_ids=[5, 6, 7], labels=[2]), Encoded(input_ids=[8], labels=[0])], pad_id=1, per_example=True
    )
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [2, 0]
