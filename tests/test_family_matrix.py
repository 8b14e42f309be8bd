"""The family matrix (issue 12, part 7): every model family users bring, end to end on CPU.

Each family is a tiny `from_config` model of its real architecture (2 layers, hidden 64) with the family's
tokenizer from tests/families.py (its special tokens and real chat template). Base models without a chat
template get one with `model.chat_template` (GPT-2 and Pythia: chatml, OPT: alpaca). For each family:
the labels decoded are exactly the assistant answers and their end-of-turn token; LoRA, QLoRA and full
fine-tuning train with the loss going down; `export --merge` gives the adapter's logits; generation
stops at the family's end-of-turn token; and the service answers a chat with a fine-tune (one family).
"""

from __future__ import annotations

import asyncio
import json
import math
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

from families import FAMILIES, Family, build_family_tokenizer, labelled_runs
from tuneforge.config import DataSection, FullMethod, LoraMethod, ModelSection, QLoraMethod, RunConfig, TrainSection
from tuneforge.data.tokenize import encode_conversation, encode_prompt
from tuneforge.data.types import Conversation, Message
from tuneforge.models.artifact import read_artifact
from tuneforge.models.chat_templates import prompt_policy
from tuneforge.models.generate import generate_batch
from tuneforge.models.loading import load_for_inference, load_tokenizer
from tuneforge.train.progress import TrainStep
from tuneforge.train.recipe import train
from tuneforge.train.rundir import RunDir

pytestmark = pytest.mark.slow

BASE_FAMILIES = {  # base models: no chat template of their own
    "pythia": Family("pythia", None, ("<|endoftext|>", "<|padding|>"), eos="<|endoftext|>", pad="<|padding|>"),
    "opt": Family("opt", None, ("<pad>", "</s>", "<unk>"), eos="</s>", pad="<pad>", bos="</s>"),
}
_DECODER = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


@dataclass(frozen=True)
class Case:
    family: str  # a tests/families.py (or BASE_FAMILIES) tokenizer
    model_type: str  # the transformers architecture
    arch: dict  # config fields of the tiny model
    chat_template: str | None = None  # model.chat_template, for base models
    end_of_turn: str = ""  # what closes each answer, when the family's own template is not used


CASES = {
    "llama3": Case("llama3", "llama", _DECODER),
    "qwen2.5": Case("qwen2.5", "qwen2", _DECODER),
    "qwen3": Case("qwen3", "qwen3", {**_DECODER, "head_dim": 16}),
    "mistral": Case("mistral-v0.3", "mistral", _DECODER),
    "gemma2": Case("gemma2", "gemma2", {**_DECODER, "head_dim": 16}),
    "gemma3": Case("gemma3", "gemma3_text", {**_DECODER, "head_dim": 16}),
    "phi3": Case("phi3", "phi3", _DECODER),
    "gpt2": Case("gpt2", "gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256), "chatml", "<|im_end|>"),
    "pythia": Case(
        "pythia", "gpt_neox", {k: v for k, v in _DECODER.items() if k != "num_key_value_heads"}, "chatml", "<|im_end|>"
    ),
    "opt": Case(
        "opt",
        "opt",
        dict(
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
            word_embed_proj_dim=64,
        ),
        "alpaca",
        "</s>",
    ),
}
QUESTION, ANSWER = "What are your opening hours?", "We are open from nine to five."
TURNS = [
    Message("user", "How do I reset my password?"),
    Message("assistant", "Open settings, choose security and press reset."),
    Message("user", "Thanks, that worked."),
    Message("assistant", "We are open from nine to five."),
]


def _family(case: Case) -> Family:
    return BASE_FAMILIES.get(case.family) or FAMILIES[case.family]


def _end_of_turn(case: Case) -> str:
    return case.end_of_turn or _family(case).end_of_turn


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory) -> dict:
    """One saved tiny base model per family (built lazily: a case asks for its own)."""
    built: dict[str, object] = {}

    def get(name: str):
        if name not in built:
            case = CASES[name]
            tok = build_family_tokenizer(_family(case))
            ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(
                AutoConfig.for_model(case.model_type, vocab_size=len(tok), **case.arch, **ids)
            )
            folder = tmp_path_factory.mktemp(f"base-{name}")
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            built[name] = folder
        return built[name]

    return get


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory) -> dict:
    """One short question and answer, repeated: small enough to learn in a few steps."""
    folder = tmp_path_factory.mktemp("chat")
    row = json.dumps({"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]})
    paths = {}
    for split, n in (("train", 16),):
        paths[split] = folder / f"{split}.jsonl"
        paths[split].write_text((row + "\n") * n)
    return paths


def _config(name: str, folder, data, out, method, **train) -> RunConfig:
    settings = dict(
        max_steps=6, batch_size=8, lr=5e-3, eval_every=3, save_every=100, log_every=1, warmup_ratio=0.0, seed=7
    )
    return RunConfig(
        objective="sft",
        output_dir=out,
        method=method,
        train=TrainSection(**{**settings, **train}),
        model=ModelSection(name=str(folder), max_length=96, chat_template=CASES[name].chat_template),
        data=DataSection(train=data["train"], validation_fraction=0.0),
    )


def _losses(run_dir) -> list[float]:
    return [e.loss for e in RunDir(run_dir).read_events() if isinstance(e, TrainStep)]


@pytest.mark.parametrize("name", list(CASES))
def test_labels_are_the_answers_and_end_of_turn(name, base_dirs):
    case = CASES[name]
    tok = load_tokenizer(base_dirs(name), case.chat_template)
    conv = Conversation(list(TURNS), {"source_line": 1})
    enc = encode_conversation(tok, conv, 4096)
    runs = labelled_runs(tok, enc.input_ids, enc.labels)
    prefix = _family(case).answer_prefix
    got = [r[len(prefix) :] if prefix and r.startswith(prefix) else r for r in runs]
    assert got == [m.content + _end_of_turn(case) for m in TURNS if m.role == "assistant"]


def _served_answer(base, run_dir, chat, tmp_path) -> str:
    """The service engine's greedy answer from a run's adapter over its base, loaded as `tuneforge serve` does."""
    from tuneforge.serve.catalog import ModelRef
    from tuneforge.serve.engine import Engine, Sampling
    from tuneforge.serve.settings import ServeSettings

    ref = ModelRef("ft:base:x:1", str(base), "adapter", str(run_dir / "adapter"), "p1", 0)
    settings = ServeSettings(
        database_url=f"sqlite:///{tmp_path / 'tf.db'}", data_dir=tmp_path / "serve", inference_threads=1
    )
    engine = Engine(settings)
    try:
        greedy = Sampling(max_tokens=8, temperature=0.0, top_p=1.0, stop=(), seed=None)
        return asyncio.run(engine.chat(ref, [chat], greedy))[0].text
    finally:
        engine.stop()


@pytest.mark.parametrize("name", list(CASES))
def test_lora_trains_the_merged_export_gives_the_adapter_logits_and_the_service_answers(
    name, base_dirs, chat_data, tmp_path, monkeypatch
):
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    from typer.testing import CliRunner

    from tuneforge.cli.main import app

    cfg = _config(name, base_dirs(name), chat_data, tmp_path / "run", LoraMethod(r=4, alpha=8), max_steps=4)
    result = train(cfg, progress=False)
    losses = _losses(result.run_dir)
    assert result.status == "completed" and len(losses) == 4 and losses[-1] < losses[0], losses
    out = tmp_path / "merged"
    exported = CliRunner().invoke(app, ["export", str(result.run_dir), "--out", str(out)])
    assert exported.exit_code == 0, exported.output
    adapter, tok = load_for_inference(result.run_dir)
    merged, merged_tok = load_for_inference(out)
    assert merged_tok.chat_template == tok.chat_template and len(merged_tok) == len(tok)
    ids = torch.tensor([encode_conversation(tok, Conversation(list(TURNS)), 96).input_ids])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapter(ids).logits, atol=1e-5, rtol=1e-4)
    chat = [{"role": "user", "content": QUESTION}]  # the service answers with the fine-tune as generate does
    assert (
        _served_answer(base_dirs(name), result.run_dir, chat, tmp_path)
        == generate_batch(adapter, tok, [chat], 8)[0].text
    )


@pytest.mark.parametrize("name", list(CASES))
def test_full_fine_tune_trains_and_generation_stops_at_the_end_of_turn_token(name, base_dirs, chat_data, tmp_path):
    cfg = _config(name, base_dirs(name), chat_data, tmp_path / "run", FullMethod(), max_steps=4, lr=1e-3, batch_size=4)
    result = train(cfg, progress=False)
    losses = _losses(result.run_dir)
    assert result.status == "completed" and losses[-1] < losses[0], losses
    model, tok = load_for_inference(result.run_dir)
    eot = tok.convert_tokens_to_ids(_end_of_turn(CASES[name]))
    with _emits_after(model, eot, 3):  # the model writes 3 tokens of its own, then the family's end-of-turn token
        answer = generate_batch(model, tok, [[{"role": "user", "content": QUESTION}]], max_new_tokens=12)[0]
    assert answer.finish_reason == "stop" and answer.completion_tokens == 4, answer
    assert _end_of_turn(CASES[name]) not in answer.text


@contextmanager
def _emits_after(model, token: int, n: int):
    """The output layer makes `token` the likeliest from the (n + 1)-th generated token on (forward calls:
    the prompt, then one per token)."""
    calls = []

    def boost(_module, _inputs, logits):  # (B, T, V)
        calls.append(1)
        if len(calls) > n:
            logits = logits.clone()
            logits[..., token] = logits.max() + 100.0
        return logits

    handle = model.get_output_embeddings().register_forward_hook(boost)
    try:
        yield
    finally:
        handle.remove()


@pytest.mark.parametrize("name", list(CASES))
def test_qlora_trains(name, base_dirs, chat_data, tmp_path):
    cfg = _config(name, base_dirs(name), chat_data, tmp_path / "run", QLoraMethod(r=4, alpha=8), max_steps=4)
    result = train(cfg, progress=False)
    losses = _losses(result.run_dir)
    assert result.status == "completed" and all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses


def test_service_answers_a_chat_with_a_fine_tune_trained_with_its_own_template(
    base_dirs, chat_data, tmp_path, monkeypatch
):
    """GPT-2 with model.chat_template: chatml (two tokens added) and data.system_prompt: fold: the engine
    serves the fine-tune with its own tokenizer and answers as `generate` does."""
    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    cfg = _config("gpt2", base_dirs("gpt2"), chat_data, tmp_path / "run", LoraMethod(r=4, alpha=8))
    cfg.data.system_prompt = "fold"
    result = train(cfg, progress=False)
    artifact = read_artifact(result.run_dir)
    assert (artifact.chat_template_name, artifact.system_prompt, artifact.own_prompting) == ("chatml", "fold", True)
    with safe_open(str(result.run_dir / "adapter" / "adapter_model.safetensors"), "pt") as saved:
        assert any("wte" in key for key in saved.keys())  # the resized embeddings travel with the adapter
    model, tok = load_for_inference(result.run_dir)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
    assert prompt_policy(tok) == "fold"
    assert tok.decode(encode_prompt(tok, chat, "fold")).startswith("<|im_start|>user\nBe brief.\n\n")
    want = generate_batch(model, tok, [chat], max_new_tokens=8)[0].text
    assert _served_answer(base_dirs("gpt2"), result.run_dir, chat, tmp_path) == want


@pytest.mark.parametrize(
    "method", ["lora", "dora", "ia3", "prompt_tuning", "prefix_tuning", "qlora", "adapter", "full"]
)
def test_every_causal_method_reloads_the_rows_a_template_added(method, base_dirs, chat_data, tmp_path):
    """GPT-2 + chatml grows the vocabulary by two tokens: each method's artifact loads (twice) with the same
    rows and the same logits (frozen new rows are the mean of the old ones, not random; trained ones are saved)."""
    from tuneforge.methods.registry import get_method

    config = get_method(method).config
    options = {"num_virtual_tokens": 4} if "tuning" in method else {}
    cfg = _config("gpt2", base_dirs("gpt2"), chat_data, tmp_path / "run", config(**options), max_steps=2)
    result = train(cfg, progress=False)
    (first, tok), (second, _) = load_for_inference(result.run_dir), load_for_inference(result.run_dir)
    assert first.get_input_embeddings().weight.shape[0] == len(tok) == len(build_family_tokenizer(FAMILIES["gpt2"])) + 2
    ids = torch.tensor([encode_prompt(tok, [{"role": "user", "content": QUESTION}])])
    with torch.no_grad():
        torch.testing.assert_close(first(input_ids=ids).logits, second(input_ids=ids).logits)
    answer = generate_batch(first, tok, [[{"role": "user", "content": QUESTION}]], max_new_tokens=3)[0]
    assert answer.completion_tokens >= 1
