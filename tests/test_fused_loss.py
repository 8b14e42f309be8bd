"""train.fused_loss: the chunked linear + cross-entropy equals the standard loss and HF's own, with its gradients.

References: F.cross_entropy on the full logits (the kernel alone), and transformers' `model(labels=...).loss` (mean
over supervised next-token targets, the convention TRL trains with) on a tiny Llama (tied embeddings, small
vocabulary) and a tiny Qwen2 (untied head, a 40k vocabulary: `auto` takes the fused path there).
"""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Gemma2Config, Gemma2ForCausalLM, Qwen2Config, Qwen2ForCausalLM

from tuneforge.config import RunConfig
from tuneforge.data.tokenize import IGNORE, Encoded
from tuneforge.errors import ConfigError
from tuneforge.objectives import objective_for
from tuneforge.objectives.base import causal_lm_loss, pack_batch, pad_batch
from tuneforge.objectives.fused_ce import AUTO_MIN_VOCAB, fused_head, linear_cross_entropy

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: run bench/gpu_check.sh on a GPU machine"
)


def features(n: int, vocab: int, seed: int = 0) -> list[Encoded]:
    """Features of 5..60 tokens with the loss on a random tail (an assistant turn)."""
    rng = random.Random(seed)
    feats = []
    for _ in range(n):
        ids = [rng.randrange(4, vocab) for _ in range(rng.randint(5, 60))]
        start = rng.randint(1, len(ids) - 1)
        feats.append(Encoded(ids, [IGNORE] * start + ids[start:]))
    return feats


def grads_of(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


def assert_grads_close(actual: dict, expected: dict, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    assert actual.keys() == expected.keys()
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("softcap", [None, 4.0])
@pytest.mark.parametrize("bias", [False, True])
def test_chunked_loss_and_gradients_equal_cross_entropy_on_full_logits(softcap, bias):
    torch.manual_seed(0)
    h = torch.randn(37, 16, requires_grad=True)
    w = torch.randn(101, 16, requires_grad=True)
    b = torch.randn(101, requires_grad=True) if bias else None
    t = torch.randint(0, 101, (37,))
    inputs = [x for x in (h, w, b) if x is not None]
    z = F.linear(h, w, b)
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    expected = F.cross_entropy(z, t, reduction="sum")
    expected_grads = torch.autograd.grad(expected * 0.5, inputs)  # a scaled loss: backward scales the saved grads
    for chunk in (8, 37, 1000):  # uneven chunks, one exact chunk, one chunk larger than the rows
        loss = linear_cross_entropy(h, w, t, b, softcap, chunk=chunk)
        torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-5)
        for got, want in zip(torch.autograd.grad(loss * 0.5, inputs), expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        with torch.no_grad():  # evaluation: the loss alone, no gradient buffers
            torch.testing.assert_close(linear_cross_entropy(h, w, t, b, softcap, chunk=chunk), expected.detach())
    frozen = linear_cross_entropy(h, w.detach(), t, None if b is None else b.detach(), softcap, chunk=8)
    (grad_h,) = torch.autograd.grad(frozen * 0.5, [h])  # a frozen head (LoRA): only the hidden states' gradient
    torch.testing.assert_close(grad_h, expected_grads[0], rtol=1e-5, atol=1e-6)


def test_no_supervised_rows_gives_a_zero_loss_that_backpropagates():
    h, w = torch.randn(0, 8, requires_grad=True), torch.randn(50, 8, requires_grad=True)
    loss = linear_cross_entropy(h, w, torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0.0 and not w.grad.any()


@pytest.fixture(scope="module")
def tiny_llama(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).train()


@pytest.fixture(scope="module")
def tiny_qwen2():
    """Untied head, vocabulary above AUTO_MIN_VOCAB."""
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=40_000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    return Qwen2ForCausalLM(cfg).train()


def hf_loss(model, batch) -> torch.Tensor:
    """transformers' own loss: mean cross-entropy over the shifted labels != -100."""
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


@pytest.mark.parametrize("family", ["tiny_llama", "tiny_qwen2"])
def test_fused_loss_equals_hf_loss_and_gradients(family, request):
    model = request.getfixturevalue(family)
    vocab = model.config.vocab_size
    feats = features(4, vocab, seed=1)
    padded = pad_batch(feats, 0)
    expected = hf_loss(model, padded)
    expected_grads = grads_of(model, expected)
    for batch in (padded, pack_batch(feats, 0, 128)):
        loss, n = causal_lm_loss(model, batch, "on")
        assert n == sum(label != IGNORE for f in feats for label in f.labels[1:])
        torch.testing.assert_close(loss / n, expected, rtol=1e-5, atol=1e-6)
        assert_grads_close(grads_of(model, loss / n), expected_grads)
    standard, n = causal_lm_loss(model, padded, "off")
    torch.testing.assert_close(standard / n, expected, rtol=1e-5, atol=1e-6)


def test_auto_fuses_large_vocabularies_with_a_plain_head_only(tiny_llama, tiny_qwen2):
    assert not fused_head(tiny_llama.lm_head, "auto", tiny_llama.config.vocab_size)  # 512 < AUTO_MIN_VOCAB
    assert fused_head(tiny_qwen2.lm_head, "auto", tiny_qwen2.config.vocab_size)
    assert fused_head(tiny_llama.lm_head, "on", 512) and not fused_head(tiny_qwen2.lm_head, "off", AUTO_MIN_VOCAB)


def test_a_lora_on_lm_head_keeps_the_standard_path_and_refuses_on(tiny_qwen2, monkeypatch):
    model = get_peft_model(tiny_qwen2, LoraConfig(r=2, target_modules=["q_proj", "lm_head"], init_lora_weights=False))
    try:
        batch = pad_batch(features(4, tiny_qwen2.config.vocab_size, seed=2), 0)
        calls = []
        monkeypatch.setattr("tuneforge.objectives.base.linear_cross_entropy", lambda *a: calls.append(a))
        loss, n = causal_lm_loss(model, batch, "auto")
        assert not calls  # the LoRA'd head is not a plain linear layer: standard path
        torch.testing.assert_close(loss / n, hf_loss(model, batch), rtol=1e-5, atol=1e-6)
        with pytest.raises(ConfigError) as err:
            causal_lm_loss(model, batch, "on")
        assert (
            err.value.problems[0].where == "train.fused_loss" and "not a plain linear" in err.value.problems[0].message
        )
    finally:
        model.unload()  # the module-scoped model without its adapter again


def test_gemma2_soft_capped_logits_equal_hf_loss():
    torch.manual_seed(0)
    cfg = Gemma2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        final_logit_softcapping=2.0,  # small: most logits are capped, so a missing cap would show
        pad_token_id=0,
    )
    model = Gemma2ForCausalLM(cfg).train()
    batch = pad_batch(features(4, 300, seed=3), 0)
    expected = hf_loss(model, batch)
    expected_grads = grads_of(model, expected)
    for setting in ("on", "off"):
        loss, n = causal_lm_loss(model, batch, setting)
        torch.testing.assert_close(loss / n, expected, rtol=1e-5, atol=1e-6)
        assert_grads_close(grads_of(model, loss / n), expected_grads)


def test_config_reads_yaml_on_off_and_passes_the_setting_to_lm_objectives(tmp_path):
    base = {"objective": "sft", "model": {"name": "demo"}, "data": {"train": "t.jsonl"}}
    for raw, setting in ((True, "on"), (False, "off"), ("auto", "auto")):  # YAML 1.1 reads `on` as True
        cfg = RunConfig.model_validate({**base, "train": {"fused_loss": raw}})
        assert cfg.train.fused_loss == setting and objective_for(cfg).fused_loss == setting
    assert "fused_loss: 'on'" in RunConfig.model_validate({**base, "train": {"fused_loss": "on"}}).to_yaml()
    with pytest.raises(ValueError, match="train.fused_loss applies to objectives sft and clm"):
        RunConfig.model_validate({**base, "objective": "mlm", "train": {"fused_loss": "on"}})


@pytest.mark.slow
def test_training_with_fused_loss_on_follows_off_through_the_recipe(
    tiny_model_dir, support_data, tmp_path, monkeypatch
):
    """train.fused_loss reaches the objective and keeps the recipe's normalisation (summed loss over the
    step's supervised tokens, with gradient accumulation): the same losses, full fine-tuning of the tied head."""
    import tuneforge.objectives.base as base
    from helpers import make_config
    from tuneforge.config import FullMethod
    from tuneforge.train.recipe import train

    fused_calls = []
    real = base.linear_cross_entropy
    monkeypatch.setattr(base, "linear_cross_entropy", lambda *a: fused_calls.append(1) or real(*a))
    losses, calls = {}, {}
    for setting in ("off", "on"):
        cfg = make_config(
            tiny_model_dir, support_data, tmp_path / setting, FullMethod(), max_steps=3, grad_accum=2,
            eval_every=3, save_every=3, fused_loss=setting,
        )  # fmt: skip
        losses[setting], calls[setting] = train(cfg, progress=False).losses, len(fused_calls)
    assert calls["off"] == 0 and calls["on"] >= 6  # 3 steps x 2 micro-batches (+ validation)
    torch.testing.assert_close(torch.tensor(losses["on"]), torch.tensor(losses["off"]), rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_cuda
def test_fused_loss_under_bf16_autocast_on_cuda_matches_and_saves_memory():
    """bf16 autocast with fp32 weights (train.precision auto on CUDA): the fused loss and gradients follow the
    standard path's to bf16 rounding, with less peak memory (a 64k vocabulary, 4096 supervised tokens)."""
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=65_536,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = Qwen2ForCausalLM(cfg).cuda().train()
    ids = torch.randint(0, cfg.vocab_size, (4, 1024), device="cuda")
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    results = {}
    for setting in ("off", "on", "off"):  # off twice: the first run also allocates the .grad buffers
        model.zero_grad(set_to_none=False)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        with torch.autocast("cuda", torch.bfloat16):
            loss, n = causal_lm_loss(model, batch, setting)
        (loss / n).backward()
        torch.cuda.synchronize()
        grads = {k: p.grad.float().clone() for k, p in model.named_parameters()}
        results[setting] = (float(loss / n), grads, torch.cuda.max_memory_allocated() - before)
    (off_loss, off_grads, off_peak), (on_loss, on_grads, on_peak) = results["off"], results["on"]
    assert abs(on_loss - off_loss) / off_loss < 1e-3
    for name, grad in off_grads.items():
        cos = F.cosine_similarity(on_grads[name].flatten(), grad.flatten(), dim=0)
        assert cos > 0.99, (name, float(cos))  # bf16 rounding differs; a wrong gradient is far off
    assert on_peak < 0.5 * off_peak, (on_peak, off_peak)
