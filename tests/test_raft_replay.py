"""RAFT (`data.retrieval`: passages in the training prompts) and replay (`data.replay`: general examples mixed in)."""

from __future__ import annotations

import json
import re

import pytest

from tuneforge.config import ReplaySection, RetrievalSection, load_config
from tuneforge.data.replay import mix_replay, replay_count
from tuneforge.data.retrieval_mix import add_passages, raft_corpus
from tuneforge.data.synthetic import support_desk_dataset
from tuneforge.data.types import Conversation, Message, TextExample
from tuneforge.errors import ConfigError
from tuneforge.eval.baselines import RAG_HEADER
from tuneforge.eval.retrieval import conversation_passage

PASSAGE = re.compile(r"^\[(\d+)\] ", re.MULTILINE)


def _passages(conv: Conversation) -> list[str]:
    """The numbered passages of a prompt's system message (each passage runs to the next number)."""
    system = conv.messages[0].content
    if RAG_HEADER not in system:
        return []
    block = system.split(RAG_HEADER + "\n", 1)[1]
    return [p.strip() for p in PASSAGE.split(block)[2::2]]


def _raft(examples, tokenizer, max_length=512, **kw):
    section = RetrievalSection(**kw)
    return add_passages(examples, section, tokenizer, max_length, 0, raft_corpus(section, examples))


def test_raft_prompts_hold_k_passages_never_their_own_and_counts_match(tiny_tokenizer):
    train = support_desk_dataset(60, seed=3)
    own = [conversation_passage(c) for c in train]
    out, counts = _raft(train, tiny_tokenizer, k=3, distractors=1, p_oracle=1.0)
    assert len(out) == 60 and counts["examples"] == 60 and counts["with_oracle"] == 60
    assert (counts["retrieved"], counts["distractors"], counts["cut_for_length"]) == (120, 60, 0)
    shown = [_passages(c) for c in out]
    assert sum(map(len, shown)) == counts["passages_in_prompts"] == 180
    for conv, before, passages, mine in zip(out, train, shown, own, strict=True):
        assert len(passages) == 3 and mine not in passages and set(passages) <= set(own)
        assert conv.messages[-1] == before.messages[-1] and conv.messages[1:-1] == before.messages[1:-1]
        assert conv.messages[0].content.startswith(before.messages[0].content)  # the instructions stay first
        assert conv.metadata == before.metadata

    # the retrieved passages are about the asked product and topic: many more prompts hold the answer's fact than
    # random passages do (60 questions over 50 product/topic pairs: some have no other passage with their fact)
    def holding_fact(convs):
        return sum(any(c.metadata["fact"] in p for p in _passages(c)) for c in convs)

    at_random = holding_fact(_raft(train, tiny_tokenizer, k=3, distractors=3)[0])  # facts shared by products count
    assert holding_fact(out) >= max(25, 2 * at_random)


def test_raft_oracle_share_follows_p_oracle_and_without_oracle_only_distractors(tiny_tokenizer):
    train = support_desk_dataset(200, seed=1)
    _, none = _raft(train, tiny_tokenizer, k=2, distractors=0, p_oracle=0.0)
    assert (none["with_oracle"], none["retrieved"], none["distractors"]) == (0, 0, 400)
    _, half = _raft(train, tiny_tokenizer, k=2, distractors=1, p_oracle=0.5)
    assert 70 <= half["with_oracle"] <= 130 and half["retrieved"] == half["with_oracle"]
    assert half["distractors"] == half["with_oracle"] + 2 * (200 - half["with_oracle"])
    again, again_counts = _raft(train, tiny_tokenizer, k=2, distractors=1, p_oracle=0.5)
    assert again_counts == half and again == _raft(train, tiny_tokenizer, k=2, distractors=1, p_oracle=0.5)[0]


def test_raft_drops_passages_that_do_not_fit_max_length(tiny_tokenizer):
    train = support_desk_dataset(30, seed=2)
    out, counts = _raft(train, tiny_tokenizer, max_length=110, k=3, distractors=1, p_oracle=1.0)
    assert counts["cut_for_length"] > 0
    assert counts["passages_in_prompts"] == 90 - counts["cut_for_length"] == sum(len(_passages(c)) for c in out)


def test_retrieval_config_errors_are_located(tmp_path, support_data, tiny_tokenizer):
    config = tmp_path / "run.yaml"
    body = f"objective: sft\nmodel: {{name: demo}}\ndata: {{train: {support_data['train']}, retrieval: "
    config.write_text(body + "{k: 1, distractors: 2}}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(config)
    assert "data.retrieval" in exc.value.problems[0].where and "distractors" in exc.value.problems[0].message
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("The Lumora Echo Mini costs $49.\n")
    config.write_text(body + "{corpus: docs}, replay: {source: general.jsonl, share: 0.2}}\n")
    cfg = load_config(config)  # relative paths are the config folder's
    assert cfg.data.retrieval.corpus == str(tmp_path / "docs") and cfg.data.replay.source == str(
        tmp_path / "general.jsonl"
    )
    assert raft_corpus(cfg.data.retrieval, [])[0] == ["The Lumora Echo Mini costs $49."]
    with pytest.raises(ConfigError) as exc:
        raft_corpus(RetrievalSection(corpus=str(tmp_path / "missing")), [])
    assert exc.value.problems[0].where == "data.retrieval.corpus"


def test_replay_mixes_the_asked_share_exactly():
    train = support_desk_dataset(90, seed=0)
    mixed, report = mix_replay(train, ReplaySection(source="demo-general", share=0.1))
    assert replay_count(90, 0.1) == 10 and len(mixed) == 100 and mixed[:90] == train
    assert sum(c.metadata.get("replay") == "demo-general" for c in mixed) == 10
    assert report == {
        "source": "demo-general",
        "share": 0.1,
        "task_examples": 90,
        "replayed_examples": 10,
        "share_actual": 0.1,
    }
    assert all(isinstance(c, Conversation) and c.messages[-1].role == "assistant" for c in mixed[90:])
    _, quarter = mix_replay(train, ReplaySection(source="demo-general", share=0.25))
    assert quarter["replayed_examples"] == 30


def test_replay_from_a_file_and_its_located_errors(tmp_path):
    train = support_desk_dataset(40, seed=0)
    general = tmp_path / "general.jsonl"
    rows = [Conversation([Message("user", f"Say {i}."), Message("assistant", f"{i}.")]) for i in range(12)]
    general.write_text("".join(json.dumps(c.to_dict()) + "\n" for c in rows))
    mixed, report = mix_replay(train, ReplaySection(source=str(general), share=0.2))
    assert report["replayed_examples"] == 10 and len({c.messages[0].content for c in mixed[40:]}) == 10
    with pytest.raises(ConfigError) as exc:
        mix_replay(train, ReplaySection(source=str(general), share=0.5))  # needs 40, the file holds 12
    assert exc.value.problems[0].where == "data.replay.share" and "holds 12" in exc.value.problems[0].message
    with pytest.raises(ConfigError) as exc:
        mix_replay(train, ReplaySection(source=str(tmp_path / "nope.jsonl"), share=0.1))
    assert exc.value.problems[0].where == "data.replay.source"
    with pytest.raises(ConfigError) as exc:
        mix_replay([TextExample("some text")] * 20, ReplaySection(source=str(general), share=0.1))
    assert exc.value.problems[0].where == "data.replay.source" and "TextExample" in exc.value.problems[0].message


@pytest.mark.slow
def test_a_tiny_raft_run_with_replay_trains_on_the_passages_and_reports_them(tiny_model_dir, support_data, tmp_path):
    from tests.helpers import make_config
    from tuneforge.train import train

    cfg = make_config(tiny_model_dir, support_data, tmp_path / "run", max_steps=2, eval_every=2, save_every=2)
    cfg.model.max_length = 256
    cfg.data.retrieval = RetrievalSection(k=2, distractors=1, p_oracle=1.0)
    cfg.data.replay = ReplaySection(source="demo-general", share=0.2)
    result = train(cfg, progress=False)
    assert result.status == "completed"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    raft, replay = manifest["datasets"]["retrieval"], manifest["datasets"]["replay"]
    assert raft["passages_indexed"] == 48 and raft["k"] == 2
    cut = raft["train"]["cut_for_length"]  # the tiny tokenizer's long prompts: a few passages do not fit
    assert raft["train"]["examples"] == 48 and raft["train"]["passages_in_prompts"] == 96 - cut and cut < 24
    assert raft["validation"]["examples"] == 8 and raft["validation"]["with_oracle"] == 8
    assert replay["task_examples"] == 48 and replay["replayed_examples"] == 12
    assert manifest["data_stats"]["train_features"] == 60 and manifest["data_stats"]["validation_features"] == 8
