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


def test_reading_chats_answer_from_one_of_their_passages_in_the_rag_layout():
    import random

    from tuneforge.data.synthetic import _GREETINGS, PRODUCTS, demonstration_chat, reading_chat
    from tuneforge.eval.baselines import RAG_HEADER

    rng = random.Random(0)
    for _ in range(200):
        system, user, answer = reading_chat(rng)
        instructions, block = system["content"].split(f"\n\n{RAG_HEADER}\n")
        passages = block.split("\n[")
        assert 2 <= len(passages) <= 3 and block.startswith("[1] ") and user["role"] == "user"
        assert sum(answer["content"] in p for p in passages) == 1  # read from exactly one passage
        assert not any(product in system["content"] for product in PRODUCTS)  # not the support desk's products
    for _ in range(200):
        chat = demonstration_chat(rng)
        turns = [m for m in chat if m["role"] != "system"]
        assert [m["role"] for m in turns] == ["user", "assistant"] * (len(turns) // 2) and 4 <= len(turns) <= 8
        shots, final = [m["content"] for m in turns[1:-1:2]], turns[-1]["content"]
        for greeting in filter(None, _GREETINGS):  # the house greeting of the demonstrations
            assert final.startswith(greeting) == shots[0].startswith(greeting)


def test_the_generated_corpus_keeps_the_rag_layout_and_the_demo_recipe_is_versioned(tmp_path, monkeypatch):
    import tuneforge.train.pretrain as pretrain_module
    from tuneforge.models.demo import DEMO_RECIPE, demo_model_built, demo_model_stale
    from tuneforge.train.pretrain import PretrainConfig, _corpus, demo_pretrain_config, ensure_demo_model

    texts = _corpus(
        PretrainConfig(output=tmp_path / "m", generated_documents=5, generated_chats=5, generated_reading=5)
    )
    assert sum("\n\nUse these passages" in t for t in texts) == 5 and len(texts) == 15
    recipe = demo_pretrain_config(tmp_path / "m")
    assert recipe.generated_reading and recipe.generated_demonstrations and recipe.block_size >= 256

    monkeypatch.setenv("TUNEFORGE_HOME", str(tmp_path / "home"))
    folder = tmp_path / "home" / "models" / "demo"
    folder.mkdir(parents=True)
    for name in ("config.json", "pretrain_manifest.json", ".complete"):  # a demo of the first recipe
        (folder / name).write_text("{}")
    assert demo_model_stale() and not demo_model_built()
    built = []
    monkeypatch.setattr(pretrain_module, "pretrain", lambda cfg, progress=True: built.append(cfg.generated_reading))
    assert ensure_demo_model(progress=False) == folder and built == [recipe.generated_reading]
    assert (folder / ".recipe").read_text().strip() == DEMO_RECIPE and demo_model_built()
    ensure_demo_model(progress=False)
    assert len(built) == 1  # cached


def test_document_blocks_keep_each_document_whole_and_cut_only_long_ones(tiny_tokenizer):
    from tuneforge.data.tokenize import document_blocks, pack_texts

    texts = ["a short one", "another short document", "word " * 40]
    eot = tiny_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    lengths = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in texts]
    blocks = document_blocks(tiny_tokenizer, texts, 16)
    # every token kept, each document starts its own feature, the long one is cut into <= 16-token pieces
    assert [len(b.input_ids) for b in blocks[:2]] == lengths[:2]
    assert sum(len(b.input_ids) for b in blocks) == sum(lengths)
    assert all(len(b.input_ids) <= 16 and b.labels == b.input_ids for b in blocks)
    assert blocks[0].input_ids[-1] == eot and blocks[1].input_ids[-1] == eot
    # stream blocks run across documents (the group_texts recipe) and drop the tail
    assert all(len(b.input_ids) == 16 for b in pack_texts(tiny_tokenizer, texts, 16))


def test_text_blocks_documents_trains_clm_and_is_refused_for_other_objectives(tmp_path, tiny_model_dir):
    import pytest

    from tuneforge.config import ConfigError, validate_config
    from tuneforge.objectives import objective_for

    train_file = tmp_path / "corpus.txt"
    train_file.write_text("first document here\n\nsecond document, a little longer than the first\n")
    raw = {
        "objective": "clm",
        "model": {"name": str(tiny_model_dir), "max_length": 32},
        "data": {"train": str(train_file), "format": "text", "text_blocks": "documents"},
    }
    cfg = validate_config(raw)
    assert objective_for(cfg).text_blocks == "documents"
    with pytest.raises(ConfigError, match="data.text_blocks: documents is for objective clm"):
        validate_config({**raw, "objective": "sft"})
