"""Issue 12 leftovers: the embedding rows a model.chat_template adds train under adapter methods, and
`data validate --chat-template` checks chats as a base model given that template renders them.

Frozen at their mean initialisation, a LoRA fine-tune of a base model could never learn to emit
`<|im_end|>`; peft's trainable_token_indices trains those rows (input embeddings, and an untied
output layer) and saves them with the adapter.
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from families import FAMILIES, Family, build_family_tokenizer
from tuneforge.config import DataSection, LoraMethod, ModelSection, RunConfig, TrainSection
from tuneforge.models.loading import load_for_inference, load_model, load_tokenizer
from tuneforge.train.recipe import train

PYTHIA = Family("pythia", None, ("<|endoftext|>", "<|padding|>"), eos="<|endoftext|>", pad="<|padding|>")
ARCH = {  # (model_type, tiny config): GPT-2 ties its output layer to the input embeddings, GPT-NeoX does not
    "gpt2": ("gpt2", FAMILIES["gpt2"], dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
    "pythia": (
        "gpt_neox",
        PYTHIA,
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4),
    ),
}


def _base(name: str, folder):
    model_type, family, arch = ARCH[name]
    tok = build_family_tokenizer(family)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, vocab_size=len(tok), **arch, **ids))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gpt2", "pythia"])
def test_lora_trains_the_rows_a_chat_template_added_and_reloads_them(name, tmp_path):
    base_dir = _base(name, tmp_path / "base")
    row = {"messages": [{"role": "user", "content": "Opening hours?"}, {"role": "assistant", "content": "Nine."}]}
    (tmp_path / "train.jsonl").write_text((json.dumps(row) + "\n") * 8)
    cfg = RunConfig(
        objective="sft",
        output_dir=tmp_path / "run",
        method=LoraMethod(r=4, target_modules=["c_attn"] if name == "gpt2" else ["query_key_value"]),
        model=ModelSection(name=str(base_dir), max_length=64, chat_template="chatml"),
        data=DataSection(train=tmp_path / "train.jsonl", validation_fraction=0.0),
        train=TrainSection(max_steps=3, batch_size=8, lr=5e-2, warmup_ratio=0.0, log_every=1, save_every=100),
    )
    result = train(cfg, progress=False)

    tok = load_tokenizer(result.run_dir / "adapter")
    new = tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    base = load_model(base_dir)  # the untrained rows: the mean of the base's rows
    mean_in = base.get_input_embeddings().weight.mean(0)  # (H,)
    mean_out = base.get_output_embeddings().weight.mean(0)
    old_in = base.get_input_embeddings().weight
    adapter = json.loads((result.run_dir / "adapter" / "adapter_config.json").read_text())
    assert sorted(sum(adapter["trainable_token_indices"].values(), [])) == sorted(new * (1 if name == "gpt2" else 2))

    # reloaded twice (the merged model folds the trained rows into plain embeddings): same rows, trained ones moved
    for _ in range(2):
        model, _ = load_for_inference(result.run_dir, torch.device("cpu"), merge=True)
        rows_in = model.get_input_embeddings().weight  # (V + 2, H)
        rows_out = model.get_output_embeddings().weight
        for i in new:
            assert (rows_in[i] - mean_in).abs().max() > 1e-3  # trained, not the mean any more
            assert (rows_out[i] - mean_out).abs().max() > 1e-3  # tied (gpt2) or trained itself (pythia)
        torch.testing.assert_close(rows_in[: old_in.shape[0]], old_in)  # the base's own rows stay frozen
    if name == "pythia":  # untied: the output rows are their own trained weights
        assert not torch.equal(rows_in[new], rows_out[new])


def test_data_validate_takes_a_chat_template_for_a_base_model(tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli.main import app

    base_dir = _base("gpt2", tmp_path / "base")  # no chat template of its own
    row = {"messages": [{"role": "user", "content": "Opening hours?"}, {"role": "assistant", "content": "Nine."}]}
    data = tmp_path / "chat.jsonl"
    data.write_text((json.dumps(row) + "\n") * 12)
    run = CliRunner().invoke
    without = run(app, ["data", "validate", str(data), "--model", str(base_dir)])
    assert without.exit_code == 1 and "chat_template" in without.output
    ok = run(app, ["data", "validate", str(data), "--model", str(base_dir), "--chat-template", "chatml"])
    assert ok.exit_code == 0, ok.output
    assert "12/12 valid" in ok.output
    typo = run(app, ["data", "validate", str(data), "--model", str(base_dir), "--chat-template", "chatlm"])
    assert typo.exit_code != 0 and "--chat-template" in typo.output and "chatml" in typo.output
    alone = run(app, ["data", "validate", str(data), "--chat-template", "chatml"])
    assert alone.exit_code != 0 and "--model" in alone.output
