"""The inference engine batches a base model with several of its fine-tunes: one forward pass
per token with a per-row LoRA adapter, and the same answers as serving each one alone."""

from __future__ import annotations

import asyncio

import pytest
import torch
from peft import IA3Config, LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from helpers import install_tiny_demo
from tuneforge.serve.catalog import ModelRef
from tuneforge.serve.engine import Engine, Sampling
from tuneforge.serve.settings import ServeSettings

GREEDY = Sampling(max_tokens=8, temperature=0.0, top_p=1.0, stop=(), seed=None)
QUESTION = [[{"role": "user", "content": "Where is my parcel?"}]]


def save_adapter(home, name: str, config, seed: int) -> ModelRef:
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(home / "models" / "demo"), config)
    with torch.no_grad():  # far from the identity, so each fine-tune answers differently
        for pname, p in model.named_parameters():
            if "lora_B" in pname or "ia3_" in pname:
                p.copy_(torch.randn_like(p) * (0.5 if "lora_B" in pname else 3.0))
    folder = home / "adapters" / name
    model.save_pretrained(folder)
    return ModelRef(f"ft:demo:{name}", "demo", "adapter", str(folder), "p1", 0)


@pytest.fixture
def engine(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path))
    install_tiny_demo(tmp_path)
    engine = Engine(
        ServeSettings(
            database_url=f"sqlite:///{tmp_path / 'tf.db'}",
            data_dir=tmp_path / "serve",
            inference_threads=1,
            batch_window_ms=200,
        )
    )
    yield engine
    engine.stop()


def ask_together(engine: Engine, refs: list[ModelRef]) -> list[str]:
    async def together():
        return await asyncio.gather(*(engine.chat(ref, QUESTION, GREEDY) for ref in refs))

    return [r[0].text for r in asyncio.run(together())]


def test_base_and_lora_fine_tunes_share_one_batch_with_the_answers_of_each_alone(engine, tmp_path):
    base = ModelRef("demo", "demo", "base", None, "tuneforge", 0)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    first, second = save_adapter(tmp_path, "one", lora, 1), save_adapter(tmp_path, "two", lora, 2)
    alone = [ask_together(engine, [ref])[0] for ref in (base, first, second)]
    before = len(engine.batches)
    assert ask_together(engine, [base, first, second, first]) == [*alone, alone[1]]
    assert engine.batches[before:] == [4]  # one forward pass per token for all four


def test_other_adapter_kinds_get_their_own_base_copy_and_batch(engine, tmp_path):
    lora = save_adapter(
        tmp_path, "lora", LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False), 1
    )
    ia3 = save_adapter(
        tmp_path,
        "ia3",
        IA3Config(target_modules=["k_proj", "v_proj", "down_proj"], feedforward_modules=["down_proj"]),
        2,
    )
    alone = [ask_together(engine, [ref])[0] for ref in (lora, ia3)]  # peft cannot hold LoRA and IA3 in one model
    assert sorted(engine.loaded()) == sorted(["demo", "ft:demo:lora", "demo#ia3", "ft:demo:ia3"])
    before = len(engine.batches)
    assert ask_together(engine, [lora, ia3, lora]) == [alone[0], alone[1], alone[0]]
    assert sorted(engine.batches[before:]) == [1, 2]
