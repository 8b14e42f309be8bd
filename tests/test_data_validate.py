"""validate_file on the bad-file corpus: exactly the expected errors, never a crash."""

import json
from pathlib import Path

import pytest

from tuneforge.data.validate import validate_file

CORPUS = Path(__file__).parent / "data_corpus"

# file -> (errors, warnings) as sorted (line, field, kind); validated with min_examples=1.
EXPECTED = {
    "truncated.jsonl": ([(3, "", "invalid_json")], []),
    "garbage.jsonl": ([(1, "", "binary_file")], []),
    "highbytes.jsonl": ([(1, "", "encoding"), (3, "", "encoding")], []),
    "latin1.jsonl": ([(2, "", "encoding")], []),
    "latin1.txt": ([(3, "", "encoding")], []),
    "utf16.jsonl": ([(1, "", "encoding")], []),
    "bom.jsonl": ([], [(1, "", "bom")]),
    "empty.jsonl": ([(None, "", "empty_file")], []),
    "corrupt.parquet": ([(None, "", "unreadable_file")], []),
    "wrong_nesting.jsonl": (
        [
            (1, "messages", "wrong_type"),
            (2, "messages[0]", "not_object"),
            (3, "", "not_object"),
            (4, "messages[0].content", "wrong_type"),
        ],
        [],
    ),
    "mixed.jsonl": ([(2, "", "mixed_format"), (3, "messages", "missing_field")], []),
    "roles.jsonl": (
        [
            (1, "messages[0].role", "missing_role"),
            (2, "messages[0].role", "unknown_role"),
            (3, "messages", "no_assistant"),
            (4, "messages[0].content", "empty_content"),
            (5, "messages[1].weight", "invalid_weight"),
            (6, "messages", "no_trainable"),
            (7, "messages[0].content", "wrong_type"),
            (8, "messages", "empty_content"),
        ],
        [(7, "messages[1].contnet", "unknown_key")],
    ),
    "truncated.json": ([(34, "", "invalid_json")], []),
    "labels.csv": ([(4, "label", "label_not_in_set"), (5, "label", "missing_field")], []),
    "ner.jsonl": (
        [(2, "tags", "tags_mismatch"), (3, "tags[0]", "invalid_tag"), (5, "tags", "label_not_in_set")],
        [(4, "tags[1]", "bio_sequence")],
    ),
}
LABELS = {"labels.csv": ["pos", "neg"], "ner.jsonl": ["PER", "LOC"]}


def _keys(issues):
    return sorted(((i.line, i.field, i.kind) for i in issues), key=lambda t: (t[0] or 0, t[1], t[2]))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_exact_errors(name):
    report = validate_file(CORPUS / name, min_examples=1, labels=LABELS.get(name))
    errors, warnings = EXPECTED[name]
    assert _keys(report.errors) == errors
    assert _keys(report.warnings) == warnings
    assert report.ok == (not errors)
    assert sum(report.error_counts.values()) == len(errors)
    assert all(i.file.endswith(name) for i in report.errors if i.kind != "unreadable_file")
    json.dumps(report.to_dict())  # machine output is plain JSON


def test_corpus_is_up_to_date():
    assert {p.name for p in CORPUS.iterdir() if p.is_file() and p.suffix != ".py"} == set(
        EXPECTED
    )  # layouts/: test_data_layouts.py


def test_ten_megabyte_single_line(tmp_path):
    path = tmp_path / "huge.jsonl"
    big = json.dumps(
        {"messages": [{"role": "user", "content": "x" * (10 * 1024 * 1024)}, {"role": "assistant", "content": "ok!"}]}
    )
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    path.write_text(big + "\n" + good + "\n")
    report = validate_file(path, min_examples=1)
    assert _keys(report.errors) == [(1, "", "record_too_large")]
    assert report.valid == 1  # the line after the huge one is still read
    relaxed = validate_file(path, min_examples=1, max_record_bytes=16 * 1024 * 1024)
    assert relaxed.ok and relaxed.valid == 2


def _chat(u, a):
    return {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}


def test_warnings_do_not_fail_and_counts(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [_chat(f"q{i}", f"answer {i}") for i in range(10)] + [
        _chat("q0", "answer 0"),
        _chat("Q0 ", "answer  0"),
        _chat("q", "ok"),
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = validate_file(path)
    assert report.ok
    assert report.warning_counts == {"duplicate": 2, "short_answer": 1}
    dup_lines = [(w.line, w.message) for w in report.warnings if w.kind == "duplicate"]
    assert dup_lines == [(11, f"same content as {path}:1"), (12, f"same content as {path}:1")]  # normalised case/space


def test_too_few_and_exit_semantics(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(_chat(f"q{i}", f"answer {i}")) for i in range(3)) + "\n")
    report = validate_file(path)
    assert not report.ok and dict(report.error_counts) == {"too_few_examples": 1}


def test_label_imbalance_warning(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"text": f"good {i}", "label": "pos"} for i in range(20)] + [{"text": "bad", "label": "neg"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = validate_file(path)
    assert report.ok and report.warning_counts == {"label_imbalance": 1}
    assert report.label_counts == {"pos": 20, "neg": 1}


def test_too_long_with_tokenizer(tmp_path):
    class WordTokenizer:  # one token per word: enough to check the limit logic
        chat_template = None
        model_max_length = 8

        def __call__(self, text):
            return {"input_ids": text.split()}

    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(_chat("a b c", "d e")) + "\n" + json.dumps(_chat("a b c d e f g h i", "j")) + "\n")
    report = validate_file(path, tokenizer=WordTokenizer(), min_examples=1)
    assert _keys(report.errors) == [(2, "", "too_long")]
    assert validate_file(path, tokenizer=WordTokenizer(), max_tokens=100, min_examples=1).ok


def test_missing_path_is_reported_not_raised(tmp_path):
    report = validate_file(tmp_path / "nope.jsonl")
    assert not report.ok and list(report.error_counts) == ["unreadable_file"]


def test_issue_cap_keeps_counts(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("nope\n" * 50)
    report = validate_file(path, max_issues=5)
    assert len(report.errors) == 5 and report.error_counts["invalid_json"] == 50 and report.truncated
