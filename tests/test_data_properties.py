"""Property-based tests: no input makes the readers raise anything but DataError, the
validator never raises, and examples survive JSONL round trips."""

import json
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge.data.readers import read_examples, write_jsonl
from tuneforge.data.types import Conversation, LabelledExample, Message, PreferencePair, TextExample, TokenExample
from tuneforge.data.validate import validate_file
from tuneforge.errors import DataError

SUFFIXES = [".jsonl", ".json", ".csv", ".tsv", ".txt"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Strings include lone surrogates: json.dumps escapes them ("\\ud800"), a real-world way to get invalid Unicode.
strings = st.text(max_size=20) | st.text(
    alphabet=st.sampled_from(["\ud800", "\udfff", "a", " ", "\u00e9", "\x00"]), max_size=5
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | strings,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "messages",
                    "role",
                    "content",
                    "weight",
                    "text",
                    "label",
                    "prompt",
                    "completion",
                    "chosen",
                    "rejected",
                    "tokens",
                    "tags",
                    "instruction",
                    "input",
                    "output",
                    "conversations",
                    "from",
                    "value",
                    "metadata",
                    "x",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


def _check_file(data: bytes, suffix: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"f{suffix}"
        path.write_bytes(data)
        try:
            examples = read_examples(path)
            assert examples
        except DataError as exc:
            assert exc.problems
        report = validate_file(path, min_examples=1)
        json.dumps(report.to_dict())
        assert report.ok == (not report.error_counts)


@SETTINGS
@given(st.binary(max_size=400), st.sampled_from(SUFFIXES))
def test_any_bytes(data, suffix):
    _check_file(data, suffix)


@SETTINGS
@given(st.lists(json_values, max_size=6), st.sampled_from([".jsonl", ".json"]))
def test_any_json_records(records, suffix):
    if suffix == ".jsonl":
        data = "\n".join(json.dumps(r) for r in records).encode()
    else:
        data = json.dumps(records).encode()
    _check_file(data, suffix)


@SETTINGS
@given(st.lists(st.text(max_size=30), max_size=8), st.sampled_from([".jsonl", ".json", ".csv", ".txt"]))
def test_any_text_lines(lines, suffix):
    _check_file("\n".join(lines).encode("utf-8", "surrogatepass"), suffix)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_values, max_size=8))
def test_prepare_never_crashes_and_reconciles(records):
    from tuneforge.data.prepare import prepare
    from tuneforge.data.prepare_config import load_prepare_config

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
        try:
            manifest = prepare(
                load_prepare_config(path, ["augment.enabled=true", "max_reject_share=1"]), Path(tmp) / "out"
            )
        except DataError as exc:  # only when no record is usable; rejects.jsonl holds every record read
            assert "no records to prepare" in str(exc) or "nothing usable remains" in str(exc)
            assert not (Path(tmp) / "out" / "train.jsonl").exists()
            return
        assert manifest["counts"]["reconciled"] and manifest["counts"]["kept"] >= 1


content = st.text(min_size=1, max_size=40).filter(lambda s: s.strip())
# a tool result needs the call it answers (an orphan one is a located error): tool calls round-trip in test_tool_calls
messages = st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), content), max_size=3)
examples = st.one_of(
    st.builds(
        lambda pre, answer, w: Conversation([Message(r, c) for r, c in pre] + [Message("assistant", answer, w)]),
        messages,
        content,
        st.sampled_from([None, 1.0]),
    ),
    st.builds(TextExample, content),
    st.builds(LabelledExample, content, content),
    st.builds(
        lambda toks: TokenExample(toks, ["O"] * len(toks)), st.lists(st.text(max_size=10), min_size=1, max_size=5)
    ),
    st.builds(lambda p, c, r: PreferencePair([Message("user", p)], c, r), content, content, content),
)


@SETTINGS
@given(st.lists(examples, min_size=1, max_size=5))
def test_round_trip(items):
    kinds = {type(e) for e in items}
    if len(kinds) > 1:
        items = [e for e in items if isinstance(e, type(items[0]))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.jsonl"
        write_jsonl(items, path)
        back = read_examples(path)
        for ex in back:
            ex.metadata.pop("source_line")
        assert back == items
