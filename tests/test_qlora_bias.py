"""QLoRA on the families whose linear layers carry biases (Qwen 2, GPT-NeoX, OPT), on CPU.

On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for an inference-only kernel on the
first eval-mode forward without gradients (the recipe's packing check and validation run one); the
training forwards after it raised an in-place error with a bias and lost the gradient through the
frozen base weights without one. On a CPU without AVX512-BF16 bitsandbytes never repacks, and these
tests pass either way.
"""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, OPTConfig, OPTForCausalLM, Qwen2Config, Qwen2ForCausalLM

from families import family_tokenizer
from helpers import make_config, write_chat_jsonl
from tuneforge.config import QLoraMethod
from tuneforge.methods import get_method
from tuneforge.models.loading import load_model
from tuneforge.train.progress import TrainStep
from tuneforge.train.recipe import train
from tuneforge.train.rundir import RunDir

pytestmark = pytest.mark.slow  # a 4-bit load and a few training steps per family: a few seconds each

# widths divisible by 32: bitsandbytes' CPU kernel packs 4-bit weights in blocks of 32 output features
FAMILIES = {
    "qwen2": lambda v: Qwen2ForCausalLM(
        Qwen2Config(
            vocab_size=v,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
        )
    ),
    "gpt-neox": lambda v: GPTNeoXForCausalLM(
        GPTNeoXConfig(
            vocab_size=v,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
        )
    ),
    "opt": lambda v: OPTForCausalLM(
        OPTConfig(
            vocab_size=v,
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=64,
        )
    ),
}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict:
    tok = family_tokenizer("qwen2.5")
    dirs = {}
    for name, build in FAMILIES.items():
        torch.manual_seed(0)
        dirs[name] = tmp_path_factory.mktemp(f"tiny-{name}")
        model = build(len(tok))
        assert any(m.bias is not None for m in model.modules() if isinstance(m, torch.nn.Linear))
        model.save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    return dirs


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("chat")
    data = {}
    for split, n in (("train", 24), ("validation", 4), ("test", 4)):
        data[split] = folder / f"{split}.jsonl"
        write_chat_jsonl(data[split], n, seed=1)
    return data


@pytest.mark.parametrize("family", list(FAMILIES))
def test_qlora_trains_families_with_biases(family, family_dirs, chat_data, tmp_path):
    cfg = make_config(
        family_dirs[family],
        chat_data,
        tmp_path / "run",
        method=QLoraMethod(r=4, alpha=8),
        max_steps=4,
        batch_size=4,
        eval_every=2,
    )
    result = train(cfg, progress=False)
    assert result.status == "completed"
    losses = [e.loss for e in RunDir(result.run_dir).read_events() if isinstance(e, TrainStep)]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], (
        losses
    )  # validation ran between these steps, so every later step ran after an eval forward
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_eval_forward_leaves_training_gradients_unchanged(family, family_dirs, quantizable_llama_dir):
    """With a bias the old failure was loud; without one (Llama) the gradient was silently wrong."""
    folder = quantizable_llama_dir if family == "llama" else family_dirs[family]
    cfg = QLoraMethod(r=4, alpha=8)
    method = get_method("qlora")
    model = method.apply(load_model(folder, torch.float32, **method.load_kwargs(cfg)), cfg)
    torch.manual_seed(0)
    ids = torch.randint(10, 300, (2, 12))

    def lora_grads() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    with torch.no_grad():  # nudge lora_B off zero so gradients reach lora_A and the earlier layers through the base
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    before = lora_grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = lora_grads()
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], msg=name)


@pytest.fixture(scope="module")
def quantizable_llama_dir(tmp_path_factory, tiny_tokenizer):
    from tuneforge.models.demo import build_tiny_llama, save_model_folder

    model = build_tiny_llama(tiny_tokenizer, hidden=64, layers=2, heads=4, intermediate=128, max_positions=256, seed=0)
    return save_model_folder(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama-q"))
