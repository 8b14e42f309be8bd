"""Numerics of the hot-path optimisations: each optimised loss (and gradient) equals the plain
one on the same batch. Not timing tests; the benchmarks in bench/ measure speed."""

from __future__ import annotations

import random

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

import tuneforge.objectives.base as base
from tuneforge.config import DataSection, FullMethod, LoraMethod, ModelSection, RunConfig, TrainSection
from tuneforge.data.tokenize import IGNORE, Encoded, pack_rows
from tuneforge.errors import ConfigError
from tuneforge.objectives.base import causal_lm_loss, pack_batch, packing_matches_padding, pad_batch
from tuneforge.train import train


def mixed_features(n: int, vocab: int, seed: int = 0) -> list[Encoded]:
    """Features of 5..90 tokens, loss on a random tail of each (as on an assistant turn)."""
    rng = random.Random(seed)
    feats = []
    for _ in range(n):
        ids = [rng.randrange(4, vocab) for _ in range(rng.randint(5, 90))]
        start = rng.randint(0, len(ids) - 1)  # from 0: the first token's label must not leak across packed rows
        feats.append(Encoded(ids, [IGNORE] * start + ids[start:]))
    return feats


@pytest.fixture(scope="module")
def lora_model(tiny_model_dir):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    model = get_peft_model(
        model,
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], init_lora_weights=False),
    )
    return model.train()


def loss_and_grads(model, batch):
    model.zero_grad()
    loss, n = causal_lm_loss(model, batch)
    loss.backward()
    return loss.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def test_pack_rows_fills_rows_within_capacity_and_places_every_item_once():
    rng = random.Random(1)
    for _ in range(200):
        lengths = [rng.randint(1, 64) for _ in range(rng.randint(1, 20))]
        rows = pack_rows(lengths, 64)
        assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
        width = max(sum(lengths[i] for i in row) for row in rows)
        assert len(rows) * width <= len(lengths) * max(lengths)  # never more computed tokens than padding
    assert pack_rows([100, 10], 64) == [[0], [1]]  # too long for a row: a row of its own, never split


def test_pack_batch_restarts_positions_and_keeps_labels(tiny_tokenizer):
    feats = mixed_features(6, 300)
    batch = pack_batch(feats, pad_id=0, capacity=128)
    ids, labels, pos = batch["input_ids"], batch["labels"], batch["position_ids"]
    assert ids.shape == labels.shape == pos.shape and ids.shape[1] <= 128
    assert int((labels != IGNORE).sum()) == sum(sum(label != IGNORE for label in f.labels[1:]) for f in feats)
    assert int((ids != 0).sum()) == sum(len(f.input_ids) for f in feats)  # every token once, the rest is padding
    assert int((pos == 0).sum()) >= len(feats)  # every example starts at position 0


@pytest.mark.parametrize("capacity", [96, 256])
def test_packed_loss_and_gradients_equal_padded(lora_model, capacity):
    feats = mixed_features(8, lora_model.get_input_embeddings().num_embeddings)
    padded_loss, padded_n, padded_grads = loss_and_grads(lora_model, pad_batch(feats, 0))
    packed = pack_batch(feats, 0, capacity)
    assert packed["input_ids"].numel() < pad_batch(feats, 0)["input_ids"].numel()
    packed_loss, packed_n, packed_grads = loss_and_grads(lora_model, packed)
    assert packed_n == padded_n
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-6, atol=1e-6)  # the loss is taken in float32
    for name, grad in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-5, atol=1e-7)


def test_head_on_supervised_positions_only_equals_full_logits(lora_model, monkeypatch):
    feats = mixed_features(8, lora_model.get_input_embeddings().num_embeddings, seed=2)
    assert base.decoder_and_head(lora_model) is not None  # llama under LoRA takes the fast path
    for batch in (pad_batch(feats, 0), pack_batch(feats, 0, 256)):
        fast = loss_and_grads(lora_model, batch)
        with monkeypatch.context() as m:
            m.setattr(base, "_PLAIN_HEAD", set())  # force the full (B, T, V) logits
            assert base.decoder_and_head(lora_model) is None
            plain = loss_and_grads(lora_model, batch)
        assert fast[1] == plain[1]
        torch.testing.assert_close(fast[0], plain[0], rtol=1e-6, atol=1e-6)  # the loss is taken in float32
        for name, grad in plain[2].items():
            torch.testing.assert_close(fast[2][name], grad, rtol=1e-5, atol=1e-7)


class DropsPositions(torch.nn.Module):
    """A model whose forward ignores position_ids: packed examples would see each other."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


def test_packing_check_detects_a_model_that_ignores_boundaries(lora_model):
    assert packing_matches_padding(lora_model, pad_id=0)
    assert not packing_matches_padding(DropsPositions(lora_model.get_base_model()), pad_id=0)


def _config(tiny_model_dir, data, out, method, **fast):
    return RunConfig(
        objective="sft",
        output_dir=out,
        model=ModelSection(name=str(tiny_model_dir), max_length=256),
        data=DataSection(train=data["train"], validation=data["validation"]),
        method=method,
        train=TrainSection(
            max_steps=3,
            batch_size=8,
            lr=5e-3,
            eval_every=3,
            save_every=3,
            log_every=1,
            warmup_ratio=0.0,
            seed=7,
            **fast,
        ),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "method,fast",
    [
        (FullMethod(), {"packing": True}),
        (LoraMethod(r=4, alpha=8), {"packing": True, "gradient_checkpointing": True, "packed_rows_per_pass": 1}),
    ],
    ids=["full-packing", "lora-packing-checkpointing-one-row-per-pass"],
)
def test_recipe_with_the_fast_options_trains_the_same_losses(tiny_model_dir, support_data, tmp_path, method, fast):
    plain = train(_config(tiny_model_dir, support_data, tmp_path / "plain", method, packing=False), progress=False)
    packed = train(_config(tiny_model_dir, support_data, tmp_path / "packed", method, **fast), progress=False)
    assert packed.trained_tokens == plain.trained_tokens
    assert packed.losses == pytest.approx(plain.losses, abs=2e-5)
    assert packed.final_metrics["val_loss"] == pytest.approx(plain.final_metrics["val_loss"], abs=2e-5)


class _Labels:  # an objective whose batches are not token sequences (classification and the like)
    name = "classification"


def _layout(lora_model, objective, **train):
    from tuneforge.train.batching import batch_layout

    cfg = RunConfig(data=DataSection(train="x.jsonl"), train=TrainSection(**train))
    return batch_layout(cfg, lora_model, objective, 0, torch.device("cpu"))


def test_packing_is_automatic_with_rows_per_pass_from_the_activation_budget(lora_model, monkeypatch):
    import tuneforge.train.batching as batching
    from tuneforge.objectives import get_objective

    auto = _layout(lora_model, get_objective("sft"))  # a tiny model: every row fits one pass
    assert (auto.packing, auto.rows_per_pass) == (True, None)
    assert "keeps packed examples apart" in auto.describe() and "MiB of activations per row" in auto.describe()
    per_row = batching.estimate_for_model(lora_model, LoraMethod(), 1, ModelSection().max_length).memory_bytes[
        "activations"
    ]
    monkeypatch.setattr(batching, "CPU_PASS_BYTES", 3 * per_row + 1)
    assert _layout(lora_model, get_objective("sft")).rows_per_pass == 3
    monkeypatch.setattr(batching, "CPU_PASS_BYTES", per_row // 2)
    assert _layout(lora_model, get_objective("sft")).rows_per_pass == 1  # never fewer than one row
    assert _layout(lora_model, get_objective("sft"), packed_rows_per_pass=3).rows_per_pass == 3
    assert not _layout(lora_model, get_objective("sft"), packing=False).packing


def test_automatic_packing_falls_back_to_padding_and_says_why(lora_model):
    from tuneforge.objectives import get_objective

    labels = _layout(lora_model, _Labels())
    assert not labels.packing and "not token sequences" in labels.why
    blind = _layout(DropsPositions(lora_model.get_base_model()), get_objective("sft"))
    assert not blind.packing and "ignores the position restarts" in blind.why


def test_packing_asked_for_explicitly_is_refused_when_impossible(lora_model):
    from tuneforge.objectives import get_objective

    with pytest.raises(ConfigError, match="not available for the classification objective"):
        _layout(lora_model, _Labels(), packing=True)
    with pytest.raises(ConfigError, match="does not keep packed examples apart"):
        _layout(DropsPositions(lora_model.get_base_model()), get_objective("sft"), packing=True)


def test_gradient_checkpointing_keeps_loss_and_gradients(lora_model):
    feats = mixed_features(6, lora_model.get_input_embeddings().num_embeddings, seed=3)
    batch = pack_batch(feats, 0, 256)
    plain = loss_and_grads(lora_model, batch)
    lora_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        checkpointed = loss_and_grads(lora_model, batch)
    finally:
        lora_model.gradient_checkpointing_disable()
    torch.testing.assert_close(checkpointed[0], plain[0], rtol=1e-10, atol=1e-9)
    for name, grad in plain[2].items():
        torch.testing.assert_close(checkpointed[2][name], grad, rtol=1e-8, atol=1e-10)


def test_row_chunks_split_a_packed_batch_into_passes_with_the_same_total_loss(lora_model):
    from tuneforge.train.batching import row_chunks

    feats = mixed_features(8, lora_model.get_input_embeddings().num_embeddings, seed=4)
    packed = pack_batch(feats, 0, 96)
    parts = row_chunks(packed, 1)
    assert len(parts) == packed["input_ids"].shape[0] > 1 and len(row_chunks(packed, None)) == 1
    whole = loss_and_grads(lora_model, packed)
    lora_model.zero_grad()
    total, count = 0.0, 0
    for part in parts:  # as the recipe does: sum the losses, let the gradients add up
        loss, n = causal_lm_loss(lora_model, part)
        loss.backward()
        total, count = total + loss.detach(), count + n
    assert count == whole[1]
    torch.testing.assert_close(total, whole[0], rtol=1e-6, atol=1e-6)
    for name, p in lora_model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, whole[2][name], rtol=1e-5, atol=1e-7)


def test_rows_per_pass_without_packing_is_a_config_error():
    from tuneforge.config import validate_config

    with pytest.raises(ConfigError, match="problem"):
        validate_config(
            {"data": {"train": "x.jsonl"}, "train": {"packing": False, "packed_rows_per_pass": 2}}, check_files=False
        )
