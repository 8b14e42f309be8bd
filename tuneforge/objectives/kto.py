"""Kahneman-Tversky optimisation (Ethayarajh et al. 2024) on unpaired answers labelled desirable or undesirable.

With r(y) = log pi(y|x) - log ref(y|x) (summed over the answer's tokens) and z a batch estimate of KL(pi || ref):

    desirable:    desirable_weight   * (1 - sigmoid(beta * (r - z)))
    undesirable:  undesirable_weight * (1 - sigmoid(beta * (z - r)))

as TRL's KTOTrainer computes it: z is the mean of r over mismatched pairs (each prompt of the micro-batch with the
previous example's answer, cycled), clamped at 0 and detached, so it is a baseline the answers are judged against,
not a target. The loss of a batch is the sum over its examples (the recipe divides by the examples of the whole
optimizer step: TRL's mean). The reference is the frozen base, the adapter switched off (as in dpo.py).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tuneforge.data.tokenize import IGNORE, Encoded, encode_conversation
from tuneforge.data.types import Conversation, Example, LabelledAnswer, Message
from tuneforge.errors import DataError, Problem
from tuneforge.objectives.base import pad_batch, reference_logps, require_examples, sequence_logps

log = logging.getLogger("tuneforge")


@dataclass
class JudgedFeature(Encoded):
    """input_ids/labels hold prompt+answer, labels on the answer only; the answer starts at token `start`."""

    start: int = 0
    desirable: bool = True
    limit: int | None = (
        None  # model.max_length: a mismatched row (this prompt, another answer) is cut there, as TRL cuts it
    )


class KahnemanTversky:
    name = "kto"
    task = "causal_lm"

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        self.beta = beta  # train.kto_beta: strength of the pull towards the reference
        self.desirable_weight = desirable_weight  # train.kto_desirable_weight
        self.undesirable_weight = undesirable_weight  # train.kto_undesirable_weight

    def prepare(self, train_examples: Sequence[Example]) -> None:
        require_examples(
            train_examples,
            LabelledAnswer,
            "the kto objective needs answers labelled desirable or undesirable",
            "give KTO records: prompt/completion/label (TRL) or messages + kto_tag (LLaMA-Factory)",
        )
        warning = balance_warning(
            sum(ex.desirable for ex in train_examples),
            sum(not ex.desirable for ex in train_examples),
            self.desirable_weight,
            self.undesirable_weight,
        )
        if warning:
            log.warning("objective kto: %s", warning)

    def model_kwargs(self, examples: Sequence[Example]) -> dict:
        return {}

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        require_examples(
            examples,
            LabelledAnswer,
            "the kto objective needs answers labelled desirable or undesirable",
            "give KTO records: prompt/completion/label (TRL) or messages + kto_tag (LLaMA-Factory)",
        )
        feats, cut = [], []
        for i, ex in enumerate(examples):
            context = [
                Message(m.role, m.content, 0.0) if m.role == "assistant" else m for m in ex.prompt
            ]  # earlier answers: context only
            enc = encode_conversation(
                tokenizer, Conversation([*context, ex.answer_message()], source=ex.source), max_length
            )
            start = next((t for t, label in enumerate(enc.labels) if label != IGNORE), None)
            if start is None:  # the prompt fills model.max_length: no answer token to judge (TRL drops these too)
                cut.append(ex.source or f"example {i}")
                continue
            feats.append(JudgedFeature(enc.input_ids, enc.labels, enc.truncated, start, ex.desirable, max_length))
        if cut:
            log.warning(
                "objective kto: %d of %d answer(s) cut off entirely by model.max_length=%d, dropped; first at %s; "
                "raise model.max_length or shorten the prompts",
                len(cut),
                len(examples),
                max_length,
                cut[0],
            )
        if examples and not feats:
            raise DataError(
                "every KTO answer is cut off entirely by model.max_length",
                [
                    Problem(
                        cut[0],
                        f"no answer token left within {max_length} tokens",
                        "raise model.max_length or shorten the prompts",
                    )
                ],
            )
        return feats

    def collate(self, features: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        """Each answer after its prompt, then the mismatched rows (prompt i, answer i-1): (2B, T); desirable: (B,)."""
        mismatched = []
        for f, other in zip(features, [features[-1], *features[:-1]]):  # TRL's KL completions: answers cycled by one
            ids = (f.input_ids[: f.start] + other.input_ids[other.start :])[: f.limit]
            labels = ([IGNORE] * f.start + other.labels[other.start :])[: f.limit]
            mismatched.append(Encoded(ids, labels))
        batch = pad_batch([*features, *mismatched], pad_id)
        batch["desirable"] = torch.tensor([f.desirable for f in features], dtype=torch.bool)  # (B,)
        return batch

    def judge(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Weighted per-example losses, implicit rewards beta * log(pi / ref) and the KL estimate: (B,), (B,), ()."""
        n = batch["desirable"].shape[0]
        rows = (batch["input_ids"], batch["attention_mask"], batch["labels"])
        policy = sequence_logps(model, *(t[:n] for t in rows))  # (B,)
        with torch.no_grad():  # the KL estimate is detached: no graph for the mismatched rows
            policy_mismatched = sequence_logps(model, *(t[n:] for t in rows))  # (B,)
        reference = reference_logps(model, *rows)  # (2B,)
        kl = (policy_mismatched - reference[n:]).mean().clamp(min=0)  # ()
        logratio = policy - reference[:n]  # (B,)
        desirable = self.desirable_weight * (1 - torch.sigmoid(self.beta * (logratio - kl)))
        undesirable = self.undesirable_weight * (1 - torch.sigmoid(self.beta * (kl - logratio)))
        return torch.where(batch["desirable"], desirable, undesirable), self.beta * logratio.detach(), kl

    def loss(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        losses, _, _ = self.judge(model, batch)
        return losses.sum(), int(losses.numel())

    @torch.no_grad()
    def metrics(self, model, features: Sequence[Encoded], batch_size: int, pad_id: int, device) -> dict[str, float]:
        """Mean implicit reward of the desirable and the undesirable answers, their margin, and the mean KL estimate."""
        model.eval()
        rewards: dict[bool, list[float]] = {True: [], False: []}
        kls = []
        for i in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in self.collate(features[i : i + batch_size], pad_id).items()}
            _, reward, kl = self.judge(model, batch)
            for good, r in zip(batch["desirable"].tolist(), reward.tolist()):
                rewards[good].append(r)
            kls.append(kl.item())
        out = {"kl": sum(kls) / max(len(kls), 1)}
        for good, key in ((True, "reward_desirable"), (False, "reward_undesirable")):
            if rewards[good]:
                out[key] = sum(rewards[good]) / len(rewards[good])
        if rewards[True] and rewards[False]:
            out["reward_margin"] = out["reward_desirable"] - out["reward_undesirable"]
        return out


def balance_warning(
    n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float
) -> str | None:
    """What is off in the training data's desirable/undesirable balance for these weights, or None.

    One-sided data leaves KTO nothing to contrast; otherwise TRL's rule (the KTO paper's Eq. 8): desirable_weight x
    desirable count / (undesirable_weight x undesirable count) should lie in [1, 4/3].
    """
    if not n_desirable or not n_undesirable:
        side, other = ("desirable", "false") if n_desirable else ("undesirable", "true")
        return (
            f"all {n_desirable + n_undesirable} training answers are {side}: KTO only moves them against its KL "
            f"baseline, with no answer of the other kind to contrast; add answers labelled {other}"
        )
    if n_desirable == n_undesirable:
        return None
    desirable = (
        round(n_undesirable * undesirable_weight / n_desirable, 2),
        round(n_undesirable * undesirable_weight / n_desirable * 1.33, 2),
    )
    undesirable = (
        round(n_desirable * desirable_weight / n_undesirable / 1.33, 2),
        round(n_desirable * desirable_weight / n_undesirable, 2),
    )
    if desirable[0] <= desirable_weight <= desirable[1] or undesirable[0] <= undesirable_weight <= undesirable[1]:
        return None
    return (
        f"{n_desirable} desirable and {n_undesirable} undesirable answers with weights {desirable_weight} / "
        f"{undesirable_weight}: set EITHER train.kto_desirable_weight in [{desirable[0]}, {desirable[1]}] "
        f"OR train.kto_undesirable_weight in [{undesirable[0]}, {undesirable[1]}] (not both; the KTO paper's Eq. 8, "
        "as TRL advises)"
    )
