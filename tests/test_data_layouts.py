"""Other tools' data layouts (tests/data_corpus/layouts, regenerate with make_layouts.py): each file is read
as its format means or refused by name, and read = valid + rejected for every one of them."""

import json
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tuneforge.cli.data import app
from tuneforge.data.prepare import prepare
from tuneforge.data.prepare_config import load_prepare_config
from tuneforge.data.readers import iter_checked, read_examples
from tuneforge.data.tokenize import IGNORE
from tuneforge.data.types import LabelledAnswer, PreferencePair, TextExample
from tuneforge.data.validate import validate_file
from tuneforge.errors import DataError

CORPUS = Path(__file__).parent / "data_corpus" / "layouts"
root = typer.Typer()
root.add_typer(app, name="data")
runner = CliRunner()


def _read(name, **kw):
    """(examples, {error kind: [lines]}) of one corpus file; every record is one or the other."""
    examples, rejected, records = [], {}, 0
    for checked in iter_checked(CORPUS / name, **kw):
        if checked.example is None and not checked.errors:
            continue
        records += 1
        if checked.errors:
            for e in checked.errors:
                rejected.setdefault(e.kind, []).append(checked.line)
        else:
            examples.append(checked.example)
    assert records == len(examples) + sum(
        len(v) for v in rejected.values()
    )  # counts add up (one reason per bad record here)
    return examples, rejected


def _pairs(examples):
    assert all(isinstance(e, PreferencePair) for e in examples)
    return [([(m.role, m.content) for m in e.prompt], e.chosen, e.rejected) for e in examples]


PREFERENCE_LAYOUTS = {
    "preference_prompt.jsonl": (
        [
            ([("user", "Name a prime number.")], "7 is prime.", "9 is prime."),
            ([("system", "Be brief."), ("user", "Capital of France?")], "Paris.", "Lyon."),
            ([("user", "2+2?")], "4", "5"),
        ],
        {"not_one_answer": [4]},
    ),
    "preference_implicit.jsonl": (
        [
            ([("user", "Is water wet?")], "It makes things wet.", "No idea."),
            ([("user", "Hi"), ("assistant", "Hello"), ("user", "Tell a joke")], "A pun, as requested.", "No."),
        ],
        {},
    ),
    "openai_dpo.jsonl": (
        [
            (
                [("user", "Hello, can you tell me how cold San Francisco is today?")],
                "Today in San Francisco it is not quite cold, as expected: about 23°C.",
                "It is not particularly cold in San Francisco today.",
            ),
            ([("system", "Answer in French."), ("user", "Thank you")], "Merci à vous !", "You're welcome."),
        ],
        {"not_one_answer": [3]},
    ),
    "sharegpt_dpo.json": (
        [
            ([("user", "What is the boiling point of water at sea level?")], "100 °C (212 °F).", "50 °C."),
            (
                [("system", "You are terse."), ("user", "Hi"), ("assistant", "Hi."), ("user", "Favourite colour?")],
                "Blue.",
                "I like many colours, let me list them all.",
            ),
            ([("system", "Translate literally."), ("user", "Translate 'cat' to German")], "Katze", "Hund"),
        ],
        {"not_one_answer": [63]},
    ),
    "llamafactory_v1_dpo.jsonl": (
        [
            ([("user", "Define entropy.")], "A measure of disorder or uncertainty.", "A kind of energy drink."),
            ([("system", "Math tutor."), ("user", "3*3?")], "9", "6"),
        ],
        {"no_prompt": [3]},
    ),
}


@pytest.mark.parametrize("name", sorted(PREFERENCE_LAYOUTS))
def test_preference_layouts_are_pairs_never_sft(name):
    expected, rejected = PREFERENCE_LAYOUTS[name]
    examples, got_rejected = _read(name)
    assert _pairs(examples) == expected
    assert got_rejected == rejected
    report = validate_file(CORPUS / name, min_examples=1)
    assert (
        report.format == "preference"
        and report.valid == len(expected)
        and report.records == len(expected) + len(rejected)
    )


def test_openai_dpo_input_tools_are_named_not_silently_dropped():
    report = validate_file(CORPUS / "openai_dpo.jsonl", min_examples=1)
    assert sorted(i.field for i in report.warnings if i.kind == "unknown_key") == [
        "input.parallel_tool_calls",
        "input.tools",
    ]


def test_dpo_objective_trains_exactly_the_chosen_and_rejected_answers(tiny_tokenizer):
    """What each layout reads is what DirectPreference encodes: the labels cover the answer, the prompt is context."""
    from tuneforge.objectives.dpo import DirectPreference

    pairs = [ex for name in PREFERENCE_LAYOUTS for ex in _read(name)[0]]
    DirectPreference().prepare(pairs)
    for ex, feat in zip(pairs, DirectPreference().encode(pairs, tiny_tokenizer, 256)):
        for ids, labels, answer in (
            (feat.input_ids, feat.labels, ex.chosen),
            (feat.rejected_ids, feat.rejected_labels, ex.rejected),
        ):
            learned = tiny_tokenizer.decode([t for t in labels if t != IGNORE], skip_special_tokens=True)
            # encode_conversation also labels assistant turns of a multi-turn prompt; they are the same tokens in the
            # chosen and the rejected row, so they cancel in the DPO margin
            history = "".join(m.content for m in ex.prompt if m.role == "assistant")
            assert learned.strip() == (history + answer).strip()
            assert ex.prompt[-1].content in tiny_tokenizer.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize(
    "name, labels", [("kto_llamafactory.json", [True, False] * 3), ("kto_trl.jsonl", [False, True, True])]
)
def test_kto_data_is_read_as_judged_answers_never_sft(name, labels):
    examples, rejected = _read(name)
    assert rejected == {} and all(isinstance(e, LabelledAnswer) for e in examples)
    assert [e.desirable for e in examples] == labels and all(e.prompt[-1].role == "user" for e in examples)
    report = validate_file(CORPUS / name, min_examples=1)
    assert report.format == "kto" and report.valid == len(labels) and report.unused_fields.counts == {}
    # a forced SFT format does not make the unpaired label a training target: refused by name, with file:line
    examples, rejected = _read(name, format="chat" if name.endswith(".json") else "prompt_completion")
    assert examples == [] and list(rejected) == ["kto_unsupported"] and len(rejected["kto_unsupported"]) == len(labels)
    with pytest.raises(DataError) as err:
        read_examples(CORPUS / name, format="chat" if name.endswith(".json") else "prompt_completion")
    first = rejected["kto_unsupported"][0]
    assert (
        f"KTO data (unpaired desirable/undesirable labels) trains only with objective kto: {len(labels)} record(s), "
        f"first at {CORPUS / name}:{first}" in str(err.value)
    )


def test_forcing_an_sft_format_on_preference_pairs_is_refused():
    examples, rejected = _read("sharegpt_dpo.json", format="sharegpt")
    assert examples == [] and list(rejected) == ["format_conflict"] and len(rejected["format_conflict"]) == 4


@pytest.mark.parametrize(
    "name, lines, kept", [("multimodal_llamafactory.json", [2, 17, 32], 0), ("multimodal_openai.jsonl", [1, 2], 1)]
)
def test_multimodal_records_are_refused_not_read_as_text(name, lines, kept):
    examples, rejected = _read(name)
    assert rejected == {"multimodal_unsupported": lines} and len(examples) == kept
    if kept:  # text-only content parts are read: joined
        assert examples[0].messages[0].content == "Plain text parts"
    report = validate_file(CORPUS / name, min_examples=1)
    assert report.refused.counts == {"multimodal_unsupported": len(lines)}
    assert report.to_dict()["refused"][0].startswith(
        f"multimodal records (images, audio, video) are not supported yet: {len(lines)} record(s)"
    )


def test_unused_fields_are_reported_with_count_and_lines():
    report = validate_file(CORPUS / "alpaca_extra_fields.jsonl", min_examples=1)
    where = str(CORPUS / "alpaca_extra_fields.jsonl")
    assert report.to_dict()["unused_fields"] == {
        "category": {"count": 1, "first": [f"{where}:3"]},
        "history": {"count": 1, "first": [f"{where}:1"]},
        "id": {"count": 3, "first": [f"{where}:1", f"{where}:2", f"{where}:3"]},
    }
    result = runner.invoke(root, ["data", "validate", where, "--min-examples", "1"])
    assert "unused field 'id': 3 record(s)" in result.output


def test_a_folder_reads_data_files_only_and_names_the_rest(tmp_path):
    folder = CORPUS / "folder_with_readme"
    examples, rejected = _read("folder_with_readme")
    assert rejected == {} and [e.messages[0].content for e in examples] == [
        "q0",
        "q1",
        "q2",
    ]  # README.md is no training text
    report = validate_file(folder, min_examples=1)
    [skipped] = [w for w in report.warnings if w.kind == "skipped_files"]
    assert "2 file(s) not read: README.md, dataset_info.json" in skipped.message
    m = prepare(load_prepare_config(folder, ["max_reject_share=0"]), tmp_path / "out")
    assert m["counts"]["read"] == 3 and m["counts"]["kept"] == 3 and "README.md" in m["steps"][0]["skipped_files"][0]
    shutil.copytree(folder, tmp_path / "docs")
    texts, _ = _read_any(tmp_path / "docs", include=["*.md"])
    assert "# Demo data" in texts


def _read_any(path, **kw):
    out = [c.example for c in iter_checked(path, **kw) if c.example is not None]
    return [e.text for e in out if isinstance(e, TextExample)], out


@pytest.mark.parametrize(
    "unit, n, first",
    [("paragraph", 1, None), ("line", 250, "Article 0: a whole document on one line."), ("file", 1, None)],
)
def test_text_units(unit, n, first):
    examples, rejected = _read("articles.txt", text_unit=unit)
    assert rejected == {} and len(examples) == n
    assert first is None or examples[0].text == first
    if unit == "paragraph":  # one paragraph of 250 lines: a warning says how to read one document per line
        [w] = [i for c in iter_checked(CORPUS / "articles.txt") for i in c.issues]
        assert w.kind == "long_paragraph" and "--text-unit line" in w.fix


def test_prepare_keeps_code_and_cjk_byte_identical(tmp_path):
    src = CORPUS / "meaning_preserving.jsonl"
    m = prepare(
        load_prepare_config(src, ["split.train=1", "split.validation=0", "split.test=0", "dedup.near=false"]),
        tmp_path / "out",
    )
    written = [json.loads(line) for line in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8").splitlines()]
    original = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines()]
    assert [r["messages"] for r in written] == [r["messages"] for r in original]
    train_text = (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8")
    assert (
        all(ch in train_text for ch in "，：（）？！；²")
        and "\n        raise ValueError" in written[0]["messages"][1]["content"]
    )
    assert (
        m["steps"][1]["counts"].get("texts_changed", 0) == 0
        and (tmp_path / "out" / "cleaning_diffs.jsonl").read_text() == ""
    )
    # NFKC is opt-in, and it does change meaning: full-width punctuation and superscripts become ASCII
    m = prepare(
        load_prepare_config(src, ["clean.nfkc=true", "split.train=1", "split.validation=0", "split.test=0"]),
        tmp_path / "nfkc",
    )
    diffs = [
        json.loads(line)
        for line in (tmp_path / "nfkc" / "cleaning_diffs.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert m["steps"][1]["counts"]["unicode_nfkc"] == 3 and {d["step"] for d in diffs} == {"unicode_nfkc"}
    assert any("²" in d["before"] and "2" in d["after"] and "²" not in d["after"] for d in diffs)
