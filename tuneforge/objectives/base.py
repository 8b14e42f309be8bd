"""The objective contract and the pieces every token-level objective shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F

from tuneforge.data.readers import Tally
from tuneforge.data.tokenize import IGNORE, Encoded, pack_rows
from tuneforge.data.types import Example, LabelledAnswer
from tuneforge.errors import DataError, Problem
from tuneforge.methods.registry import reference_context
from tuneforge.objectives.fused_ce import fused_head, linear_cross_entropy, not_fusable


class Objective(Protocol):
    name: str
    task: str  # a key of models.loading.MODEL_CLASSES: which model head is loaded

    def prepare(self, train_examples: Sequence[Example]) -> None:
        """Check the example type and fix what the training data defines (the label set), once per run."""

    def model_kwargs(self, examples: Sequence[Example]) -> dict:
        """Extra `from_pretrained` kwargs the head needs (num_labels, id2label...)."""

    def encode(self, examples: Sequence[Example], tokenizer, max_length: int) -> list[Encoded]:
        """Examples -> token features (stable order; may drop nothing silently)."""

    def collate(self, features: Sequence[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
        """Features -> one padded batch.

        Objectives over token sequences may also offer `pack(features, pad_id, capacity)`
        (`pack_batch`): the same features in rows without padding, used when `train.packing` is on.
        """

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Summed loss over the batch and the number of tokens/examples it sums over.

        Returning a sum lets the recipe normalise by the token count of the whole optimizer
        step, so gradient accumulation gives the same update as one large batch.
        """

    def metrics(
        self, model: torch.nn.Module, features: Sequence[Encoded], batch_size: int, pad_id: int, device
    ) -> dict[str, float]:
        """Task metrics on validation features beyond the loss (accuracy, entity F1...);
        {} when the loss says it all."""


def require_examples(examples: Sequence[Example], kind: type | tuple[type, ...], summary: str, fix: str) -> None:
    """Raise one DataError naming (up to ten of) the examples that are not of `kind`, at their file:line when known.

    KTO data (LabelledAnswer) is refused by name, as the readers refuse it under a forced SFT format: read as
    another objective's data, its undesirable answers would become targets.
    """
    wrong = [i for i, ex in enumerate(examples) if not isinstance(ex, kind)]
    if not wrong:
        return
    places = {i: getattr(examples[i], "source", "") or f"example {i}" for i in wrong}
    judged = Tally()
    for i in wrong:
        if isinstance(examples[i], LabelledAnswer):
            judged.add("kto_unsupported", places[i])
    if judged.counts:
        summary = f"{summary}; {judged.line('kto_unsupported')}"
    raise DataError(summary, [Problem(places[i], f"got {type(examples[i]).__name__}", fix) for i in wrong[:10]])


def sequence_logps(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of log p(token) over labelled positions, per row: (N,)."""
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (N, T-1, V)
    targets = labels[:, 1:]  # (N, T-1)
    token_logps = -F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")  # (N, T-1)
    return (token_logps * (targets != IGNORE)).sum(-1)


@torch.no_grad()
def reference_logps(model, ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """`sequence_logps` of the reference model: the frozen base, `model` with its method's adapter switched off: (N,).

    No second copy of the model in memory; the config accepts reference objectives (dpo, kto) only with methods
    that have a reference context.
    """
    with reference_context(model):
        return sequence_logps(model, ids, mask, labels)


def pad_batch(features: Sequence[Encoded], pad_id: int, per_example: bool = False) -> dict[str, torch.Tensor]:
    """Right-pad to the longest feature: input_ids, attention_mask (B, T) and labels (B, T), IGNORE on
    padding; with `per_example`, labels (B,) hold each feature's one label (sequence classification)."""
    width = max(len(f.input_ids) for f in features)
    ids = torch.full((len(features), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    labels = torch.full((len(features), width), IGNORE, dtype=torch.long)
    for row, f in enumerate(features):
        ids[row, : len(f.input_ids)] = torch.tensor(f.input_ids)
        mask[row, : len(f.input_ids)] = 1
        if not per_example:
            labels[row, : len(f.labels)] = torch.tensor(f.labels)
    if per_example:
        labels = torch.tensor([f.labels[0] for f in features], dtype=torch.long)  # (B,)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def pack_batch(features: Sequence[Encoded], pad_id: int, capacity: int) -> dict[str, torch.Tensor]:
    """Pack whole features into rows of <= `capacity` tokens: input_ids, labels, position_ids (R, W).

    Positions restart at 0 for every feature. With no attention_mask, transformers reads
    the restarts as document boundaries and builds a block-diagonal causal mask, so each
    feature attends only to itself: the loss equals `pad_batch`'s on the same features
    while padding shrinks from ~40% of the tokens (random batches of mixed lengths) to
    the few tokens left at the end of each row. The row tail is one more pseudo-document
    (positions from 0, labels IGNORE) that no real token can see.
    """
    rows = pack_rows([len(f.input_ids) for f in features], capacity)
    width = max(sum(len(features[i].input_ids) for i in row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for i in row:
            n = len(features[i].input_ids)
            ids[r, start : start + n] = torch.tensor(features[i].input_ids)
            labels[r, start + 1 : start + n] = torch.tensor(
                features[i].labels[1:]
            )  # a first token is never predicted, as in a padded row
            positions[r, start : start + n] = torch.arange(n)
            start += n
        positions[r, start:] = torch.arange(width - start)
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def causal_lm_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], fused_loss: str = "auto"
) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy summed over labelled positions, for padded or packed batches.

    Only the supervised positions go through the LM head when the model allows it (see
    `decoder_and_head`): with assistant-only labels that skips ~35% of the head's FLOPs
    and never materialises the (B, T, V) logits, the largest activation of a small-vocab
    model's step and the dominant one for a 128k vocabulary. `fused_loss` (train.fused_loss:
    auto | on | off) also spares the (N, V) logits of those positions: chunked head + loss
    (`fused_ce.linear_cross_entropy`), the same sum to float noise.
    """
    targets = batch["labels"][:, 1:]  # (B, T-1): token t is predicted at position t-1
    keep = targets != IGNORE  # (B, T-1)
    inputs = {
        "input_ids": batch["input_ids"],
        "use_cache": False,
    }  # a KV cache is useless in training (and disables packing)
    if "position_ids" in batch:
        inputs["position_ids"] = batch["position_ids"]
    else:
        inputs["attention_mask"] = batch["attention_mask"]
    split = decoder_and_head(model)
    if split is None:
        if fused_loss == "on":
            kind = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
            raise not_fusable(
                f"{kind} is not one of the architectures whose logits are the LM head's output "
                f"({', '.join(sorted(_PLAIN_HEAD | _SOFTCAPPED_HEAD))}), or a prompt-learning adapter wraps it"
            )
        logits = model(**inputs).logits[:, :-1][keep]  # (N, V)
        return F.cross_entropy(logits.float(), targets[keep], reduction="sum"), int(keep.sum())
    decoder, head = split
    hidden = decoder(**inputs).last_hidden_state[:, :-1][keep]  # (N, d)
    softcap = head_softcap(model)
    if fused_head(head, fused_loss, getattr(head, "out_features", 0)):
        loss = linear_cross_entropy(hidden, head.weight, targets[keep], head.bias, softcap)
    else:
        logits = head(hidden).float()  # (N, V)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        loss = F.cross_entropy(logits, targets[keep], reduction="sum")
    return loss, int(keep.sum())


# Architectures whose logits are exactly lm_head(last hidden state): no logit scaling or
# soft-capping after the head (Gemma 2 caps, Cohere and Granite scale), so the head can
# be applied to a subset of positions.
_PLAIN_HEAD = {"llama", "mistral", "qwen2", "qwen3", "phi3"}
# ... and those whose logits are cap * tanh(lm_head(h) / cap), cap = config.final_logit_softcapping
_SOFTCAPPED_HEAD = {"gemma2"}


def _base_model(model: torch.nn.Module) -> torch.nn.Module | None:
    """The transformers model under a peft wrapper (None for prompt learning: PeftModel.forward adds tokens)."""
    if hasattr(model, "active_peft_config"):  # a peft wrapper
        if model.active_peft_config.is_prompt_learning:  # virtual tokens are added by PeftModel.forward
            return None
        return model.get_base_model()
    return model


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, LM head) of a causal LM whose head may run on selected positions only, else None."""
    base = _base_model(model)
    if base is None or not hasattr(base, "get_decoder"):
        return None
    if getattr(base.config, "model_type", None) not in _PLAIN_HEAD | _SOFTCAPPED_HEAD:
        return None
    return base.get_decoder(), base.get_output_embeddings()


def head_softcap(model: torch.nn.Module) -> float | None:
    """The cap of a `_SOFTCAPPED_HEAD` model's logits (None: uncapped)."""
    base = _base_model(model)
    if base is None or getattr(base.config, "model_type", None) not in _SOFTCAPPED_HEAD:
        return None
    return base.config.final_logit_softcapping


@torch.no_grad()
def packing_matches_padding(model: torch.nn.Module, pad_id: int) -> bool:
    """Does this model keep packed documents apart? Two short random documents, packed vs padded.

    A model whose mask builder ignores position restarts would let them attend to each
    other and silently train on a different loss; the recipe refuses packing then.
    """
    g = torch.Generator().manual_seed(0)
    vocab_size = model.get_input_embeddings().weight.shape[0]  # (V, H); peft may wrap the layer (trained rows)
    feats = [Encoded(ids, ids) for ids in (torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in (11, 7))]
    was_training = model.training
    model.eval()
    try:
        packed, _ = causal_lm_loss(model, pack_batch(feats, pad_id, capacity=32))
        padded, _ = causal_lm_loss(model, pad_batch(feats, pad_id))
    finally:
        model.train(was_training)
    return bool(torch.isclose(packed, padded, rtol=1e-4, atol=1e-4))
