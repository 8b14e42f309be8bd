"""train.precision (issue 12 part 6): bf16 autocast with fp32 master weights, as peers train.

The measurement behind the choice: on a tiny Llama, bf16 autocast with fp32 masters tracks fp32 losses
to 1e-3 while pure bf16 weights drift, and a small AdamW step (lr 1e-5) on pure bf16 weights is
mostly rounded away (the weight keeps its value), while the master weights take it.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import make_config
from tuneforge.config import FullMethod, LoraMethod
from tuneforge.errors import ConfigError
from tuneforge.train.optim import build_optimizer
from tuneforge.train.precision import resolve_precision
from tuneforge.train.recipe import train

CPU = torch.device("cpu")


def test_auto_is_fp32_on_cpu_and_bf16_on_cuda(monkeypatch):
    assert resolve_precision("auto", "auto", CPU, trains_base=True).name == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    cuda = resolve_precision("auto", "auto", torch.device("cuda"), trains_base=True)
    assert (cuda.name, cuda.weights, cuda.master_weights) == ("bf16", torch.float32, True)
    # adapters: the frozen base loads in bf16, the adapter weights stay fp32 (peft)
    frozen = resolve_precision("auto", "auto", torch.device("cuda"), trains_base=False)
    assert frozen.weights == torch.bfloat16 and frozen.master_weights and frozen.warning() is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "auto", torch.device("cuda"), trains_base=False).name == "fp32"
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla V100")
    with pytest.raises(ConfigError) as err:  # asked for explicitly on a GPU without bf16: refused, not downgraded
        resolve_precision("bf16", "auto", torch.device("cuda"), trains_base=True)
    assert err.value.problems[0].where == "train.precision" and "fp16" in err.value.problems[0].fix
    assert resolve_precision("fp32", "auto", CPU, True).summary() == "precision: fp32 (weights float32)"
    assert frozen.summary() == "precision: bf16 autocast, trained weights fp32 (base bfloat16)"


def test_16_bit_trained_weights_are_described_and_warned():
    pure = resolve_precision("bf16", "bfloat16", CPU, trains_base=True)
    assert not pure.master_weights and "model.dtype: auto" in pure.warning()
    assert pure.describe() == {
        "train.precision": "bf16",
        "autocast": "bfloat16",
        "base_weights": "bfloat16",
        "trained_weights": "bfloat16",
        "optimizer_states": "bfloat16",
        "master_weights": False,
        "loss_scaling": False,
    }
    fp16 = resolve_precision("fp16", "auto", CPU, trains_base=True)
    assert fp16.scaler() is not None and fp16.describe()["loss_scaling"] and fp16.weights == torch.float32


def _tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def _train(base, precision: str, dtype: str, lr: float, steps: int, ids) -> tuple[LlamaForCausalLM, list[float]]:
    """Full fine-tuning with the trainer's pieces: its Precision's autocast and its AdamW."""
    model = copy.deepcopy(base).to(getattr(torch, dtype))
    p = resolve_precision(precision, "auto" if dtype == "float32" else dtype, CPU, trains_base=True)
    optimizer = build_optimizer(model, lr, 0.0)
    losses = []
    for _ in range(steps):
        with p.autocast():
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return model, losses


@pytest.mark.slow
def test_bf16_autocast_with_fp32_masters_tracks_fp32_and_pure_bf16_loses_small_updates():
    base = _tiny_llama()
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))  # (B, T)
    _, fp32 = _train(base, "fp32", "float32", 1e-3, 6, ids)
    _, mixed = _train(base, "bf16", "float32", 1e-3, 6, ids)
    _, pure = _train(base, "bf16", "bfloat16", 1e-3, 6, ids)
    assert fp32[-1] < fp32[0] - 0.2  # it learns
    # measured here: masters within 3e-4 of fp32 at every step; pure bf16 0.007 off after 6 steps and growing
    assert max(abs(a - b) for a, b in zip(mixed, fp32, strict=True)) < 1e-3
    assert abs(pure[-1] - fp32[-1]) > 5 * max(abs(a - b) for a, b in zip(mixed, fp32, strict=True))

    # small updates: AdamW's first steps move each weight by ~lr = 1e-5, under half a bf16 ulp of a weight of ~0.02
    name = "model.layers.0.mlp.up_proj.weight"
    start = dict(base.named_parameters())[name].detach()  # (128, 64)
    moved = {}
    for key, dtype in (("fp32", "float32"), ("mixed", "float32"), ("pure", "bfloat16")):
        model, _ = _train(base, "fp32" if key == "fp32" else "bf16", dtype, 1e-5, 2, ids)
        moved[key] = dict(model.named_parameters())[name].detach().float() - start.to(getattr(torch, dtype)).float()
    error = {k: ((moved[k] - moved["fp32"]).norm() / moved["fp32"].norm()).item() for k in ("mixed", "pure")}
    kept = (moved["pure"] == 0).float().mean().item()  # share of bf16 weights the two updates did not change
    # measured here: masters 6% off the fp32 update (bf16 gradients), pure bf16 >100% off with ~85% of weights unchanged
    assert error["mixed"] < 0.2 and error["pure"] > 0.8 and kept > 0.6
    assert (moved["mixed"] != 0).float().mean().item() > 0.99  # every master weight took its update


@pytest.mark.slow
def test_train_records_precision_and_keeps_trained_weights_fp32(tiny_model_dir, support_data, tmp_path):
    cfg = make_config(tiny_model_dir, support_data, tmp_path / "full", FullMethod(), max_steps=2, precision="bf16")
    result = train(cfg, progress=False)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["precision"]["autocast"] == "bfloat16" and manifest["precision"]["master_weights"] is True
    assert manifest["precision"]["trained_weights"] == "float32"
    saved = json.loads((result.run_dir / "model" / "config.json").read_text())
    assert saved.get("dtype", saved.get("torch_dtype")) == "float32"

    # adapters under fp16: the base loads in float16, LoRA weights stay fp32, the loss is scaled
    cfg = make_config(tiny_model_dir, support_data, tmp_path / "lora", LoraMethod(r=4), max_steps=2, precision="fp16")
    result = train(cfg, progress=False)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["precision"] == {
        "train.precision": "fp16",
        "autocast": "float16",
        "base_weights": "float16",
        "trained_weights": "float32",
        "optimizer_states": "float32",
        "master_weights": True,
        "loss_scaling": True,
    }
    assert all(torch.isfinite(torch.tensor(result.losses))) and manifest["memory_estimate"]["autocast_copies"] > 0
