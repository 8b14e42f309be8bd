"""model.attn_implementation: which attention kernel a run loads, and that the kernels agree on packed rows.

flash_attention_2 itself needs a CUDA GPU and the flash-attn package; here its selection is checked with the
device and the package faked, and its absence gives a located error. bench/gpu_check.sh runs it on a GPU.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

import tuneforge.models.loading as loading
from helpers import make_config
from test_perf_equivalence import mixed_features
from tuneforge.config import FullMethod, ModelSection
from tuneforge.errors import ModelLoadError
from tuneforge.objectives.base import causal_lm_loss, pack_batch, pad_batch
from tuneforge.train import train

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(
    ("setting", "device", "compute", "installed", "expected"),
    [
        ("auto", CUDA, torch.bfloat16, True, "flash_attention_2"),
        ("auto", CUDA, torch.float16, True, "flash_attention_2"),
        ("auto", CUDA, None, True, None),  # fp32 compute: flash-attn has no fp32 kernels
        ("auto", CUDA, torch.bfloat16, False, None),  # package missing: the model's default (sdpa)
        ("auto", CPU, torch.bfloat16, True, None),
        ("sdpa", CUDA, torch.bfloat16, True, "sdpa"),
        ("eager", CPU, None, False, "eager"),
        ("flash_attention_2", CPU, None, False, "flash_attention_2"),  # asked for: load_model says why it cannot
    ],
)
def test_auto_picks_flash_attention_only_where_it_runs(monkeypatch, setting, device, compute, installed, expected):
    monkeypatch.setattr(loading, "flash_attn_installed", lambda: installed)
    assert loading.pick_attn_implementation(setting, device, compute) == expected


def test_a_kernel_that_cannot_run_is_a_located_error_when_asked_and_skipped_when_auto(tiny_model_dir):
    if loading.flash_attn_installed() and torch.cuda.is_available():  # here it can run: asked for, it loads
        model = loading.load_model(tiny_model_dir, torch.bfloat16, attn_implementation="flash_attention_2")
        assert model.config._attn_implementation == "flash_attention_2"
        return
    with pytest.raises(ModelLoadError) as err:
        loading.load_model(tiny_model_dir, attn_implementation="flash_attention_2")
    problem = err.value.problems[0]
    assert problem.where == "model.attn_implementation" and "flash-attn" in problem.fix
    # chosen by auto: the model's default kernel instead, no error
    model = loading.load_model(tiny_model_dir, attn_implementation="flash_attention_2", attn_required=False)
    assert model.config._attn_implementation in ("sdpa", "eager")


def test_unknown_kernel_name_is_rejected_by_the_config():
    with pytest.raises(ValueError, match="attn_implementation"):
        ModelSection(attn_implementation="flash")


_DECODER = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory, tiny_model_dir) -> dict:
    """Tiny from_config models of several families (vocabulary 512, enough for `mixed_features`' ids)."""
    dirs = {"llama": tiny_model_dir}
    for model_type, extra in (("qwen2", {}), ("mistral", {}), ("phi3", {}), ("qwen3", {"head_dim": 16})):
        torch.manual_seed(0)
        ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)  # family defaults point past a 512 vocabulary
        config = AutoConfig.for_model(
            model_type, vocab_size=512, max_position_embeddings=256, **_DECODER, **extra, **ids
        )
        dirs[model_type] = tmp_path_factory.mktemp(model_type)
        AutoModelForCausalLM.from_config(config).save_pretrained(dirs[model_type])
    return dirs


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "phi3", "qwen3"])
def test_eager_and_sdpa_give_the_same_packed_loss_as_padding(family_dirs, family):
    feats = mixed_features(12, 500, seed=4)
    padded, packed = pad_batch(feats, 0), pack_batch(feats, 0, 192)
    losses = {}
    for kernel in ("eager", "sdpa"):
        model = loading.load_model(family_dirs[family], torch.float64, attn_implementation=kernel).eval()
        assert model.config._attn_implementation == kernel
        with torch.no_grad():
            losses[kernel, "packed"] = causal_lm_loss(model, packed)[0].item()
            losses[kernel, "padded"] = causal_lm_loss(model, padded)[0].item()
    reference = losses["eager", "padded"]
    # float64 weights, fp32 logits (causal_lm_loss casts): a token seeing another document would move it by far more
    assert all(v == pytest.approx(reference, rel=1e-6) for v in losses.values()), losses


def test_the_manifest_names_the_kernel_that_ran(tiny_model_dir, support_data, tmp_path):
    cfg = make_config(tiny_model_dir, support_data, tmp_path / "run", FullMethod(), max_steps=1)
    cfg.model.attn_implementation = "eager"
    result = train(cfg, progress=False)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert manifest["attn_implementation"] == "eager"
