"""LLaMA-Factory's dataset_info.json as a source, nested --map paths, content parts and per-message loss weights.

The corpus (tests/data_corpus/llamafactory, written by make_llamafactory.py from LLaMA-Factory's public data
README) holds one dataset per layout; each is asserted on what is read, what is rejected and why."""

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli.main import app
from tuneforge.data import dataset_info
from tuneforge.data.readers import iter_checked, read_examples
from tuneforge.data.tokenize import IGNORE, encode_conversation
from tuneforge.data.types import Conversation, LabelledAnswer, PreferencePair, TextExample
from tuneforge.errors import DataError

CORPUS = Path(__file__).parent / "data_corpus" / "llamafactory"
INFO = CORPUS / "dataset_info.json"

# dataset -> (records, kept, rejection kinds)
EXPECTED = {
    "alpaca_demo": (6, 5, {"missing_field": 1}),
    "sharegpt_demo": (4, 3, {"unknown_role": 1}),
    "openai_tags": (3, 3, {}),
    "ranking_alpaca": (3, 3, {}),
    "ranking_sharegpt": (2, 2, {}),
    "kto_demo": (4, 4, {}),
    "pretrain_demo": (3, 3, {}),
    "mllm_demo": (2, 0, {"multimodal_unsupported": 2}),
}


def checked(name):
    return [c for c in iter_checked(dataset_info.source(INFO, [name])) if c.example is not None or c.errors]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_dataset_reads_what_its_description_means_and_rejects_by_name(name):
    records, kept, rejected = EXPECTED[name]
    rows = checked(name)
    good = [c for c in rows if c.example is not None]
    kinds = Counter(e.kind for c in rows for e in c.errors)
    assert (len(rows), len(good), dict(kinds)) == (records, kept, rejected)
    assert len(good) + sum(1 for c in rows if c.errors) == records  # every record kept or rejected
    assert all(c.example.metadata["dataset"] == name for c in good)


def test_alpaca_columns_join_prompt_and_query_with_one_newline_and_read_history_and_system():
    ex = [c.example for c in checked("alpaca_demo") if c.example is not None]
    assert ex[0].messages[0].content == "Translate to French\nGood morning"  # LLaMA-Factory's join
    assert [m.role for m in ex[2].messages] == ["system", "user", "assistant"]
    assert [(m.role, m.content) for m in ex[3].messages][:4] == [
        ("user", "Name the largest planet."),
        ("assistant", "Jupiter."),
        ("user", "How many moons does it have?"),
        ("assistant", "About 95."),
    ]
    rows = checked("alpaca_demo")
    missing = next(c for c in rows if c.errors)
    assert missing.file.endswith("alpaca.json") and missing.errors[0].field == "output"
    assert rows[-1].unused == ["source"]  # a field the description does not name is reported, not dropped


def test_sharegpt_tags_roles_system_turn_and_content_parts():
    rows = checked("sharegpt_demo")
    assert rows[1].example.messages[0].content == "You are a pirate."  # the system turn wins, as in LLaMA-Factory
    assert [i.kind for i in rows[1].issues] == ["system_overridden"]
    assert rows[2].errors[0].field == "conversations[1].from" and rows[2].line == 3
    openai = [c.example for c in checked("openai_tags")]
    assert [m.role for m in openai[0].messages] == ["system", "user", "assistant"]
    assert openai[1].messages[0].content == "Spell cat" and openai[1].messages[1].content == "C-A-T"


def test_ranking_kto_pretraining_and_media_become_their_example_types():
    pairs = [c.example for c in checked("ranking_alpaca")] + [c.example for c in checked("ranking_sharegpt")]
    assert all(isinstance(p, PreferencePair) for p in pairs)
    assert pairs[1].prompt[-1].content == "Add the numbers\n3 and 4" and pairs[1].rejected == "3 + 4 = 8."
    assert [m.role for m in pairs[4].prompt] == ["user", "assistant", "user"]
    kto = [c.example for c in checked("kto_demo")]
    assert all(isinstance(k, LabelledAnswer) for k in kto) and [k.desirable for k in kto] == [True, False, True, False]
    assert all(isinstance(c.example, TextExample) for c in checked("pretrain_demo"))
    assert all(c.errors[0].kind == "multimodal_unsupported" for c in checked("mllm_demo"))


def test_the_whole_file_reads_every_dataset_and_counts_add_up():
    rows = [c for c in iter_checked(INFO) if c.example is not None or c.errors]
    assert len(rows) == sum(r for r, _, _ in EXPECTED.values())
    assert sum(c.example is not None for c in rows) == sum(k for _, k, _ in EXPECTED.values())


def test_hub_sources_unknown_keys_and_names_are_refused_with_the_key(tmp_path):
    (tmp_path / "a.json").write_text("[]")
    info = tmp_path / "dataset_info.json"
    info.write_text(
        json.dumps(
            {
                "hub": {"hf_hub_url": "someone/data"},
                "sampled": {"file_name": "a.json", "num_samples": 10, "formatting": "openai"},
                "bad_cols": {"file_name": "missing.json", "columns": {"answer": "out"}},
            }
        )
    )
    with pytest.raises(DataError) as err:
        list(iter_checked(info))
    where = {p.where for p in err.value.problems}
    assert {
        f"{info} [hub].hf_hub_url",
        f"{info} [sampled].num_samples",
        f"{info} [sampled].formatting",
        f"{info} [bad_cols].file_name",
        f"{info} [bad_cols].columns.answer",
    } <= where
    with pytest.raises(DataError, match="no dataset named 'nope'"):
        list(iter_checked(f"{info}#nope"))


def test_cli_validate_and_prepare_take_dataset(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["data", "validate", str(INFO), "--dataset", "alpaca_demo", "--min-examples", "1"])
    assert r.exit_code == 1 and "missing_field" in r.output and "alpaca.json" in r.output, r.output
    out = tmp_path / "prep"
    r = runner.invoke(app, ["data", "prepare", str(INFO), "--dataset", "openai_tags", "--out", str(out)])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["read"] == 3 and manifest["counts"]["rejected"] == 0


def test_nested_map_paths_move_the_value_and_report_what_is_left(tmp_path):
    path = tmp_path / "nested.jsonl"
    rows = [{"data": {"question": f"Q{i}?", "answer": f"A{i}.", "lang": "en"}, "id": i} for i in range(3)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = list(iter_checked(path, mapping="prompt=data.question,completion=data.answer"))
    assert [c.example.messages[0].content for c in got] == ["Q0?", "Q1?", "Q2?"]
    assert got[0].unused == ["data", "id"] and got[0].example.metadata["data"] == {"lang": "en"}
    with pytest.raises(DataError, match="invalid column mapping"):
        list(iter_checked(path, mapping="prompt=data..question"))


def test_loss_weight_and_weight_zero_turns_carry_no_label(tiny_tokenizer):
    rows = list(iter_checked(CORPUS / "v1_messages.jsonl"))
    assert [c.example is not None for c in rows] == [True, True, False]
    assert rows[2].errors[0].field == "messages[1].loss_weight"
    conv = rows[1].example
    assert [m.weight for m in conv.messages if m.role == "assistant"] == [0.0, 1.0]
    enc = encode_conversation(tiny_tokenizer, conv, 10_000)
    trained = tiny_tokenizer.decode([t for t in enc.labels if t != IGNORE])
    assert "Final answer" in trained and "Draft" not in trained
    openai_weight = Conversation(conv.messages)  # OpenAI's weight: the same field
    assert encode_conversation(tiny_tokenizer, openai_weight, 10_000).labels == enc.labels


def test_run_config_reads_a_described_dataset_and_data_mapping(tmp_path):
    from tuneforge.config import DataSection

    examples = read_examples(f"{INFO}#openai_tags")
    assert len(examples) == 3
    section = DataSection(train=tmp_path / "x.jsonl", mapping={"prompt": "data.question"})
    assert section.mapping == {"prompt": "data.question"}
