"""What a run writes loads in other tools: plain peft, merged HF folders, the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers import make_config
from tuneforge.config import LoraMethod
from tuneforge.models.loading import load_for_inference
from tuneforge.train import train


@pytest.fixture(scope="module")
def lora_run(tiny_model_dir, tmp_path_factory):
    from tuneforge.data.readers import write_jsonl
    from tuneforge.data.synthetic import support_desk_dataset

    folder = tmp_path_factory.mktemp("lora-run")
    examples = support_desk_dataset(40, seed=5)
    data = {"train": folder / "train.jsonl", "validation": folder / "val.jsonl", "test": folder / "test.jsonl"}
    write_jsonl(examples[:32], data["train"])
    write_jsonl(examples[32:36], data["validation"])
    write_jsonl(examples[36:], data["test"])
    # lr high enough that the adapter is far from its zero initialisation
    cfg = make_config(tiny_model_dir, data, folder / "run", method=LoraMethod(r=4, alpha=8), max_steps=5, lr=5e-2)
    return train(cfg, progress=False).run_dir


def _logits(model, tok):
    ids = tok(
        "<|im_start|>user\nHow much is the Lumora Lantern?<|im_end|>\n", return_tensors="pt", add_special_tokens=False
    )["input_ids"]
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_loads_with_plain_peft_and_matches(tiny_model_dir, lora_run):
    tok = AutoTokenizer.from_pretrained(lora_run / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base_logits = _logits(base, tok)
    plain = PeftModel.from_pretrained(base, str(lora_run / "adapter")).eval()
    ours, _ = load_for_inference(lora_run)
    assert torch.allclose(_logits(plain, tok), _logits(ours, tok), atol=1e-6)
    assert not torch.allclose(_logits(plain, tok), base_logits, atol=1e-3)  # the adapter changed something


def test_merged_model_equals_adapter_model(lora_run, tmp_path):
    adapter_model, tok = load_for_inference(lora_run)
    expected = _logits(adapter_model, tok)
    merged, _ = load_for_inference(lora_run, merge=True)
    assert torch.allclose(_logits(merged, tok), expected, atol=1e-5)
    assert all(torch.isfinite(p).all() for p in merged.parameters())


@pytest.mark.slow
def test_cli_export_generate_and_chat(lora_run, tmp_path):
    out = tmp_path / "merged"
    cli = [sys.executable, "-m", "tuneforge.cli.main"]
    done = subprocess.run(
        cli + ["export", str(lora_run), "--out", str(out)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert (out / "config.json").exists() and (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    adapter_model, tok = load_for_inference(lora_run)
    assert torch.allclose(_logits(merged, tok), _logits(adapter_model, tok), atol=1e-5)

    gen = subprocess.run(
        cli + ["generate", str(out), "--prompt", "How much is the Lantern?", "--max-new-tokens", "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert gen.returncode == 0, gen.stderr
    chat = subprocess.run(
        cli + ["chat", str(lora_run), "--max-new-tokens", "5"],
        input="hello\nand more\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.count("assistant>") == 2
