"""`tuneforge estimate`: exact parameter counts on the meta device, memory parts, the CLI's JSON."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig
from typer.testing import CliRunner

from tuneforge.cli.estimate import method_section
from tuneforge.cli.main import app
from tuneforge.errors import ConfigError
from tuneforge.methods import get_method, trainable_parameters
from tuneforge.methods.estimate import estimate
from tuneforge.models.loading import load_model

LLAMA_70B = dict(
    hidden_size=8192,
    intermediate_size=28672,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
    max_position_embeddings=8192,
)


# LLaMA-65B as the LLaMA paper (Touvron et al. 2023, table 2) gives it: 80 layers, hidden 8192, 64 heads, FFN 22016
LLAMA_65B = dict(
    hidden_size=8192,
    intermediate_size=22016,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=64,
    vocab_size=32000,
    tie_word_embeddings=False,
    max_position_embeddings=2048,
)
GIB = 1 << 30


@pytest.fixture(scope="module")
def config_65b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-65b")
    LlamaConfig(**LLAMA_65B).save_pretrained(folder)
    return folder / "config.json"


@pytest.fixture(scope="module")
def config_70b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama-70b")
    LlamaConfig(**LLAMA_70B).save_pretrained(folder)
    return folder / "config.json"


@pytest.mark.parametrize(
    "name,options",
    [
        ("full", {}),
        ("freeze", {"top_layers": 1}),
        ("lora", {"r": 4, "target_modules": ["q_proj", "v_proj"]}),
        ("dora", {"r": 4}),
        ("ia3", {}),
        ("prompt_tuning", {"num_virtual_tokens": 5}),
        ("prefix_tuning", {"num_virtual_tokens": 5}),
        ("adapter", {"placement": "houlsby", "bottleneck": 8}),
    ],
)
def test_meta_counts_equal_the_real_model(name, options, tiny_model_dir):
    cfg = method_section(name, options)
    real = get_method(name).apply(load_model(tiny_model_dir, torch.float32), cfg)
    result = estimate(tiny_model_dir, cfg, batch=2, seq_len=16)
    assert (result.trainable_params, result.total_params) == trainable_parameters(real)


@pytest.mark.slow
def test_70b_lora_without_allocating(config_70b):
    result = estimate(
        config_70b,
        method_section("lora", {"r": 8, "target_modules": ["q_proj", "v_proj"]}),
        batch=1,
        seq_len=512,
        dtype="bfloat16",
    )
    # q: r*(8192+8192), v: r*(8192+1024) per layer (grouped-query attention: 8 kv heads of 128)
    assert result.trainable_params == 80 * 8 * (8192 + 8192 + 8192 + 1024)
    base = result.total_params - result.trainable_params
    assert 70.5e9 < base < 70.6e9
    mem = result.memory_bytes
    assert mem["weights"] == 2 * base + 4 * result.trainable_params  # bf16 base, fp32 adapters
    assert mem["gradients"] == 4 * result.trainable_params and mem["optimizer"] == 2 * mem["gradients"]
    assert mem["autocast_copies"] == 0  # precision fp32: no autocast
    assert mem["total"] == mem["weights"] + mem["gradients"] + mem["optimizer"] + mem["activations"]
    # per block and token: 2 bytes * (6h + 3kv + 4i) over 80 blocks, plus the logits (V * (2 + 4 + 4) bytes per token)
    assert mem["activations"] == 512 * (80 * 2 * (6 * 8192 + 3 * 1024 + 4 * 28672) + 128256 * 10)

    qlora = estimate(
        config_70b,
        method_section("qlora", {"r": 8, "target_modules": ["q_proj", "v_proj"]}),
        batch=1,
        seq_len=512,
        dtype="bfloat16",
    )
    assert qlora.trainable_params == result.trainable_params
    assert (
        0.25 * mem["weights"] < qlora.memory_bytes["weights"] < 0.3 * mem["weights"]
    )  # ~4.1 bits vs 16 (embeddings stay 16-bit)
    checkpointed = estimate(
        config_70b,
        method_section("lora", {"r": 8}),
        batch=1,
        seq_len=512,
        dtype="bfloat16",
        gradient_checkpointing=True,
    )
    assert checkpointed.memory_bytes["activations"] < mem["activations"] / 5


def test_only_blocks_above_the_lowest_trainable_keep_activations(tiny_model_dir):
    freeze = estimate(tiny_model_dir, method_section("freeze", {"top_layers": 1}), batch=2, seq_len=16)
    lora = estimate(tiny_model_dir, method_section("lora", {"r": 4}), batch=2, seq_len=16)
    prompt = estimate(tiny_model_dir, method_section("prompt_tuning", {"num_virtual_tokens": 4}), batch=2, seq_len=16)
    assert (freeze.assumptions["layers_with_activations"], lora.assumptions["layers_with_activations"]) == (1, 2)
    assert prompt.assumptions["layers_with_activations"] == 2  # the gradient reaches the soft prompt below every block
    assert freeze.memory_bytes["activations"] < lora.memory_bytes["activations"]


def test_cli_json(tiny_model_dir):
    result = CliRunner().invoke(
        app,
        [
            "estimate",
            "--model",
            str(tiny_model_dir / "config.json"),
            "--method",
            "lora",
            "--rank",
            "4",
            "--targets",
            "q_proj,v_proj",
            "--batch",
            "2",
            "--seq-len",
            "32",
            "--output",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["trainable_params"] == 2 * 4 * (64 + 64 + 64 + 64) and data["total_params"] > data["trainable_params"]
    parts = {"weights", "autocast_copies", "gradients", "optimizer", "activations", "total"}
    assert set(data["memory_bytes"]) == parts
    assert data["assumptions"]["precision"] == "bf16" and data["assumptions"]["dtype"] == "bfloat16"  # frozen base


def test_options_the_method_does_not_take_are_errors():
    with pytest.raises(ConfigError) as err:
        method_section("lora", {"top_layers": 2, "r": 0})
    where = {p.where for p in err.value.problems}
    assert where == {"--top-layers", "--rank"}


def test_llama_65b_full_fine_tuning_is_over_780_gb_as_the_qlora_paper_says(config_65b):
    """bf16 autocast with fp32 masters: weights 4 + autocast copies 2 + gradients 4 + AdamW 8 bytes per weight."""
    full = estimate(config_65b, method_section("full", {}), batch=1, seq_len=512, precision="bf16")
    n, mem = full.total_params, full.memory_bytes
    assert 65.2e9 < n < 65.3e9 and full.trainable_params == n
    assert (mem["weights"], mem["gradients"], mem["optimizer"]) == (4 * n, 4 * n, 8 * n)
    embed = 32000 * 8192  # the input embedding is looked up, not cast; every Linear (lm_head too) is
    norms = (2 * 80 + 1) * 8192
    assert mem["autocast_copies"] == 2 * (n - embed - norms)
    assert mem["total"] > 780e9 and full.assumptions["master_weights"] is True
    # pure bf16 weights (model.dtype: bfloat16): 2 + 2 + 4 bytes, no master copy - the QLoRA paper's 16-bit figure
    pure = estimate(config_65b, method_section("full", {}), batch=1, seq_len=512, precision="bf16", dtype="bfloat16")
    assert pure.memory_bytes["weights"] + pure.memory_bytes["gradients"] + pure.memory_bytes["optimizer"] == 8 * n
    assert pure.assumptions["master_weights"] is False and pure.memory_bytes["total"] < mem["total"] / 2


def test_llama_65b_qlora_r64_all_linear_fits_48_gib(config_65b):
    """The QLoRA paper's setting: NF4 + double quantization, r=64 on every linear layer, gradient checkpointing."""
    cfg = method_section("qlora", {"r": 64, "target_modules": "all-linear"})
    result = estimate(config_65b, cfg, batch=1, seq_len=512, precision="bf16", gradient_checkpointing=True)
    per_layer = 64 * (4 * (8192 + 8192) + 3 * (8192 + 22016))  # q, k, v, o; gate, up, down
    assert result.trainable_params == 80 * per_layer
    mem = result.memory_bytes
    # fp32 adapters: 4 (weight) + 2 (autocast copy) + 4 (gradient) + 8 (AdamW) bytes each
    assert mem["weights"] - 4 * result.trainable_params < 35e9  # ~4.13 bits per frozen linear weight, 16-bit embeddings
    assert mem["autocast_copies"] == 2 * result.trainable_params
    assert mem["total"] < 48 * GIB, mem
