"""Readers: every input format -> the one example type; round trips through JSONL."""

import json

import pytest

from tuneforge.data.readers import read_examples, write_jsonl
from tuneforge.data.types import Conversation, LabelledExample, Message, PreferencePair, TextExample, TokenExample
from tuneforge.errors import DataError


def _write(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _strip(examples):
    for ex in examples:
        ex.metadata.pop("source_line", None)
    return examples


def test_chat_with_weights(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "system", "content": "s"},
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "draft", "weight": 0},
                {"role": "user", "content": "again"},
                {"role": "assistant", "content": "final", "weight": 1},
            ],
            "metadata": {"topic": "x"},
        }
    ]
    [conv] = read_examples(_write(tmp_path / "c.jsonl", rows))
    assert [m.weight for m in conv.messages] == [None, None, 0.0, None, 1.0]
    assert conv.reference == "final" and conv.metadata == {"topic": "x", "source_line": 1}


@pytest.mark.parametrize(
    "row, messages",
    [
        ({"prompt": "p", "completion": "c"}, [("user", "p"), ("assistant", "c")]),
        ({"instruction": "i", "input": "x", "output": "o"}, [("user", "i\n\nx"), ("assistant", "o")]),
        ({"instruction": "i", "input": "", "output": "o"}, [("user", "i"), ("assistant", "o")]),
        (
            {
                "conversations": [
                    {"from": "system", "value": "s"},
                    {"from": "human", "value": "h"},
                    {"from": "gpt", "value": "g"},
                ]
            },
            [("system", "s"), ("user", "h"), ("assistant", "g")],
        ),
    ],
)
def test_chat_like_formats_become_conversations(tmp_path, row, messages):
    [conv] = read_examples(_write(tmp_path / "d.jsonl", [row]))
    assert isinstance(conv, Conversation)
    assert [(m.role, m.content) for m in conv.messages] == messages


def test_other_formats(tmp_path):
    assert read_examples(_write(tmp_path / "a.jsonl", [{"text": "t", "label": 3}]))[0].label == "3"
    tok = read_examples(_write(tmp_path / "b.jsonl", [{"tokens": ["Ada", "ran"], "ner_tags": ["B-PER", "O"]}]))[0]
    assert isinstance(tok, TokenExample) and tok.tags == ["B-PER", "O"]
    pair = read_examples(_write(tmp_path / "c.jsonl", [{"prompt": "p", "chosen": "good", "rejected": "bad"}]))[0]
    assert isinstance(pair, PreferencePair) and pair.prompt[0].content == "p" and pair.chosen == "good"


def test_text_file_and_folder(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("para one\nline two\n\n\npara two\n")
    (tmp_path / "docs" / "b.md").write_text("# title\n")
    (tmp_path / "docs" / "ignored.bin").write_bytes(b"\x00")
    examples = read_examples(tmp_path / "docs")  # a folder is read for data files: b.md is not one
    assert [e.text for e in examples] == ["para one\nline two", "para two"]
    assert [e.metadata["source_line"] for e in examples] == [1, 5]
    examples = read_examples(tmp_path / "docs", include=["*.md"])
    assert [e.text for e in examples] == ["para one\nline two", "para two", "# title"]
    assert [e.metadata["source_line"] for e in examples] == [1, 5, 1]
    assert [e.text for e in read_examples(tmp_path / "docs" / "b.md")] == ["# title"]  # named explicitly, it is read


def test_csv_json_parquet_and_mapping(tmp_path):
    (tmp_path / "d.csv").write_text('body,stars\n"nice, really",5\nbad,1\n')
    examples = read_examples(tmp_path / "d.csv", mapping="text=body,label=stars")
    assert [(e.text, e.label) for e in examples] == [("nice, really", "5"), ("bad", "1")]
    (tmp_path / "d.json").write_text(json.dumps([{"prompt": "p", "completion": "c"}] * 2, indent=1))
    assert len(read_examples(tmp_path / "d.json")) == 2
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), tmp_path / "d.parquet")
    assert [e.label for e in read_examples(tmp_path / "d.parquet")] == ["x", "y"]


def test_format_override_and_unknown_format(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"text": "hello", "label": "a"}])
    assert isinstance(read_examples(path, format="text")[0], TextExample)
    with pytest.raises(DataError, match="unknown data format"):
        read_examples(path, format="xml")
    with pytest.raises(DataError, match="invalid column mapping"):
        read_examples(path, mapping="text")


def test_bad_input_raises_data_error_listing_all(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    with pytest.raises(DataError) as err:
        read_examples(path)
    wheres = [p.where for p in err.value.problems]
    assert wheres == [f"{path}:1: messages", f"{path}:2"]
    with pytest.raises(DataError, match="no such file"):
        read_examples(tmp_path / "missing.jsonl")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="no examples"):
        read_examples(tmp_path / "e.jsonl")


ROUND_TRIP = [
    Conversation(
        [
            Message("system", "s"),
            Message("user", "ü ☃"),
            Message("assistant", "a", 0.0),
            Message("assistant", "b", 1.0),
        ],
        {"k": 1},
    ),
    TextExample("plain\ntext"),
    LabelledExample("t", "pos"),
    TokenExample(["A", "b"], ["B-X", "O"]),
    PreferencePair([Message("user", "p")], "c", "r"),
]


@pytest.mark.parametrize("example", ROUND_TRIP, ids=lambda e: type(e).__name__)
def test_round_trip_through_jsonl(tmp_path, example):
    write_jsonl([example, example], tmp_path / "out.jsonl")
    assert _strip(read_examples(tmp_path / "out.jsonl")) == [example, example]


def test_alpaca_csv_to_jsonl_to_chat_round_trip(tmp_path):
    (tmp_path / "a.csv").write_text("instruction,input,output\nAdd,2 and 2,4\nGreet,,hello\n")
    first = _strip(read_examples(tmp_path / "a.csv"))
    write_jsonl(first, tmp_path / "a.jsonl")
    assert _strip(read_examples(tmp_path / "a.jsonl", format="chat")) == first
