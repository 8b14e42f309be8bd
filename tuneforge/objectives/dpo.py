"""Direct preference optimisation (Rafailov et al. 2023) on chosen/rejected answer pairs.

loss = -log sigmoid(beta * [(log pi(chosen) - log ref(chosen)) - (log pi(rejected) - log ref(rejected))])

where log pi(answer) sums the answer's token log-probabilities given the prompt. The
reference model is the frozen base itself, run with the adapter switched off (each method
says how: peft's `disable_adapter()`, the bottleneck adapters' equivalent): no second copy in
memory. That is why the config accepts dpo only with methods that have a reference context.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tuneforge.data.tokenize import IGNORE, Encoded, encode_conversation
from tuneforge.data.types import Conversation, Example, Message, PreferencePair
from tuneforge.errors import DataError, Problem
from tuneforge.objectives.base import pad_batch, reference_logps, require_examples, sequence_logps


@dataclass
class PairFeature(Encoded):
    """input_ids/labels hold prompt+chosen; rejected_* hold prompt+rejected (labels only on the answer)."""

    rejected_ids: list[int] = field(default_factory=list)
    rejected_labels: list[int] = field(default_factory=list)


class DirectPreference:
    name = "dpo"
    task = "causal_lm"

    def __init__(self, beta: float = 0.1) -> None:
        self.beta = beta  # strength of the pull towards the reference (train.dpo_beta; the paper's range is 0.1-0.5)

    def prepare(self, train_examples: Sequence[Example]) -> None:
        require_examples(
            train_examples,
            PreferencePair,
            "the dpo objective needs {prompt, chosen, rejected} examples",
            "give preference records",
        )

    def model_kwargs(self, examples: Sequence[Example]) -> dict:
        return {}

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        """Pairs whose prompt leaves no answer token within max_length are dropped by name (count, file:line),
        as TRL drops them; the run stops only when no pair is left."""
        feats, cut = [], []
        for i, ex in enumerate(examples):
            pair = [
                Conversation([*ex.prompt, Message("assistant", a)], source=ex.source) for a in (ex.chosen, ex.rejected)
            ]
            chosen, rejected = (
                encode_conversation(tokenizer, c, max_length) for c in pair
            )  # template errors say file:line
            if all(t == IGNORE for t in chosen.labels) or all(t == IGNORE for t in rejected.labels):
                cut.append(ex.source or f"example {i}")
                continue
            feats.append(
                PairFeature(
                    chosen.input_ids,
                    chosen.labels,
                    chosen.truncated or rejected.truncated,
                    rejected.input_ids,
                    rejected.labels,
                )
            )
        fix = "raise model.max_length or shorten the prompts"
        if cut and not feats:
            raise DataError(
                "every preference pair is cut off entirely by model.max_length",
                [Problem(w, f"no answer token left within {max_length} tokens", fix) for w in cut[:20]],
            )
        if cut:
            logging.getLogger("tuneforge").warning(
                "objective dpo: %d of %d preference pair(s) cut off entirely by model.max_length=%d, dropped; "
                "first at %s; %s",
                len(cut),
                len(examples),
                max_length,
                ", ".join(cut[:3]),
                fix,
            )
        return feats

    def collate(self, features: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        """Chosen rows then rejected rows: (2B, T), one forward pass for both."""
        rows = [Encoded(f.input_ids, f.labels) for f in features] + [
            Encoded(f.rejected_ids, f.rejected_labels) for f in features
        ]
        return pad_batch(rows, pad_id)

    def rewards(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Implicit rewards beta * log(pi / ref) of the chosen and the rejected answers: (B,), (B,)."""
        args = (batch["input_ids"], batch["attention_mask"], batch["labels"])
        policy, reference = sequence_logps(model, *args), reference_logps(model, *args)  # (2B,), (2B,)
        margin = self.beta * (policy - reference)
        half = margin.shape[0] // 2
        return margin[:half], margin[half:]

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        chosen, rejected = self.rewards(model, batch)
        return -F.logsigmoid(chosen - rejected).sum(), int(chosen.numel())

    @torch.no_grad()
    def metrics(self, model, features: Sequence[Encoded], batch_size: int, pad_id: int, device) -> dict[str, float]:
        model.eval()
        wins, margins = [], []
        for i in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in self.collate(features[i : i + batch_size], pad_id).items()}
            chosen, rejected = self.rewards(model, batch)
            wins += (chosen > rejected).tolist()
            margins += (chosen - rejected).tolist()
        return {"reward_accuracy": sum(wins) / max(len(wins), 1), "reward_margin": sum(margins) / max(len(margins), 1)}
