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
    assert set(data["memory_bytes"]) == {"weights", "gradients", "optimizer", "activations", "total"}


def test_options_the_method_does_not_take_are_errors():
    with pytest.raises(ConfigError) as err:
        method_section("lora", {"top_layers": 2, "r": 0})
    where = {p.where for p in err.value.problems}
    assert where == {"--top-layers", "--rank"}
