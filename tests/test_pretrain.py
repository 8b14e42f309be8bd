"""`tuneforge pretrain`: tokenizer + Llama from scratch, trained with clm, saved as an HF folder."""

from __future__ import annotations

import json

from transformers import AutoModelForCausalLM, AutoTokenizer

from tuneforge.train.pretrain import load_pretrain_config, pretrain


def test_pretrain_from_config_writes_a_loadable_model(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(
        "output: out/model\ngenerated_documents: 200\ngenerated_chats: 50\nblock_size: 64\n"
        "architecture: {hidden: 32, layers: 2, heads: 2, vocab_size: 400}\n"
        "train: {max_steps: 6, batch_size: 8, lr: 1.0e-2, eval_every: 3, log_every: 1}\n"
    )
    folder = pretrain(load_pretrain_config(config), progress=False)
    assert folder == tmp_path / "out" / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_hidden_layers == 2 and len(tok) == model.config.vocab_size <= 400
    assert "<|im_start|>" in tok.chat_template and "{% generation %}" in tok.chat_template
    losses = [
        r["loss"]
        for r in map(json.loads, (folder / "pretrain_metrics.jsonl").read_text().splitlines())
        if r["type"] == "train"
    ]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert not (tmp_path / "out" / ".model-work").exists()  # scratch space is cleaned up
