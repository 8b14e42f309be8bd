"""The GPU check (issue 12 part 8, issue 20 part 5): tests marked `gpu`, run by bench/gpu_check.sh.

Without CUDA they skip with the reason; the last test runs the check's throughput script in its CPU
dry-run mode, so the script is exercised on every machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import make_config
from tuneforge.config import FullMethod, LoraMethod, QLoraMethod
from tuneforge.train.recipe import train

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device: run bench/gpu_check.sh on a GPU machine"
)


def gpu(test):
    return pytest.mark.gpu(needs_cuda(test))


def _manifest(result) -> dict:
    return json.loads((result.run_dir / "manifest.json").read_text())


@gpu
def test_bf16_autocast_trains_with_fp32_masters_and_tracks_fp32(tiny_model_dir, support_data, tmp_path):
    runs = {}
    for precision in ("auto", "fp32"):
        cfg = make_config(
            tiny_model_dir, support_data, tmp_path / precision, FullMethod(), precision=precision, device="cuda"
        )
        runs[precision] = train(cfg, progress=False)
    described = _manifest(runs["auto"])["precision"]
    assert described["autocast"] == "bfloat16" and described["trained_weights"] == "float32"
    assert described["master_weights"] and _manifest(runs["auto"])["batch_layout"]["packing"]
    mixed, fp32 = runs["auto"].losses, runs["fp32"].losses
    assert mixed[-1] < mixed[0]
    assert max(abs(a - b) / b for a, b in zip(mixed, fp32, strict=True)) < 0.02  # bf16 rounding of the activations

    cfg = make_config(tiny_model_dir, support_data, tmp_path / "lora", LoraMethod(r=4), device="cuda")
    lora = _manifest(train(cfg, progress=False))["precision"]
    assert (lora["base_weights"], lora["trained_weights"]) == ("bfloat16", "float32")


@gpu
def test_auto_attention_trains_packed_rows_with_flash_attention(tiny_model_dir, support_data, tmp_path):
    """model.attn_implementation auto: flash_attention_2 under bf16 autocast where flash-attn is installed, and the
    packed loss within bf16 rounding of sdpa's (the varlen path sees the same documents as sdpa's block mask)."""
    pytest.importorskip("flash_attn", reason="flash-attn is not installed on this machine")
    runs = {}
    for kernel in ("auto", "sdpa"):
        cfg = make_config(
            tiny_model_dir, support_data, tmp_path / kernel, FullMethod(), precision="bf16", device="cuda"
        )
        cfg.model.attn_implementation = kernel
        runs[kernel] = train(cfg, progress=False)
    assert _manifest(runs["auto"])["attn_implementation"] == "flash_attention_2"
    assert _manifest(runs["auto"])["batch_layout"]["packing"]
    flash, sdpa = runs["auto"].losses, runs["sdpa"].losses
    assert max(abs(a - b) / b for a, b in zip(flash, sdpa, strict=True)) < 0.02


@gpu
def test_qlora_with_bitsandbytes_on_cuda(tiny_model_dir, support_data, tmp_path):
    from tuneforge.models.generate import generate_batch
    from tuneforge.models.loading import load_for_inference

    method = QLoraMethod(r=4, compute_dtype="bfloat16")
    result = train(make_config(tiny_model_dir, support_data, tmp_path / "q", method, device="cuda"), progress=False)
    assert result.losses[-1] < result.losses[0] and all(map(torch.isfinite, torch.tensor(result.losses)))
    model, tok = load_for_inference(result.run_dir, torch.device("cuda"))
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds, kinds  # the base stays 4-bit on the GPU
    answer = generate_batch(model, tok, [[{"role": "user", "content": "How do I reset my password?"}]], 8)[0]
    assert answer.completion_tokens >= 1


@gpu
@pytest.mark.parametrize("attention", ["sdpa", "flash_attention_2"])
def test_packed_rows_keep_documents_apart_on_cuda(attention, tiny_model_dir):
    """Packed rows (position_ids restarting per document, no attention_mask from tuneforge) give the padded loss.

    flash_attention_2 takes the varlen path from the position ids: no (T, T) mask reaches the attention.
    """
    from transformers import AutoModelForCausalLM

    from tuneforge.objectives.base import packing_matches_padding

    if attention == "flash_attention_2":
        pytest.importorskip("flash_attn", reason="flash-attn is not installed on this machine")
    dtype = torch.bfloat16 if attention == "flash_attention_2" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=dtype, attn_implementation=attention).cuda()
    masks = []
    hook = model.model.layers[0].self_attn.register_forward_pre_hook(
        lambda m, a, kw: masks.append(kw.get("attention_mask")), with_kwargs=True
    )
    try:
        assert packing_matches_padding(model, pad_id=model.config.pad_token_id or 0)
    finally:
        hook.remove()
    if attention == "flash_attention_2":
        assert masks[0] is None  # the packed pass: documents found from position_ids, varlen kernels


@gpu
def test_generation_on_cuda_batches_like_one_by_one(tiny_model_dir):
    from tuneforge.models.generate import generate_batch
    from tuneforge.models.loading import load_for_inference

    model, tok = load_for_inference(tiny_model_dir, torch.device("cuda"))
    prompts = [[{"role": "user", "content": "Hello"}], [{"role": "user", "content": "What are your opening hours?"}]]
    together = generate_batch(model, tok, prompts, max_new_tokens=6)
    alone = [generate_batch(model, tok, [p], max_new_tokens=6)[0] for p in prompts]
    assert [r.text for r in together] == [r.text for r in alone]
    assert all(r.completion_tokens >= 1 for r in together)


@pytest.mark.slow
def test_the_gpu_check_runs_its_throughput_comparison_on_cpu(tmp_path):
    """bench/gpu_check.sh parses and its Python part runs both tools in the CPU dry-run (a tiny Qwen2, 3 steps)."""
    assert subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")]).returncode == 0
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import gpu_throughput
    finally:
        sys.path.remove(str(ROOT / "bench"))
    report = gpu_throughput.main(
        ["--dry-run", "--in-process", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]
    )
    saved = json.loads((tmp_path / "out" / "gpu_throughput.json").read_text())
    assert saved["ratio"] == report["ratio"] > 0 and saved["device"] == "cpu"
    for tool in ("tuneforge", "trl"):
        assert saved["results"][tool]["tokens_per_s"] > 0 and saved["results"][tool]["steps"] == 3
    assert saved["results"]["tuneforge"]["precision"]["train.precision"] == "fp32"  # auto on CPU
