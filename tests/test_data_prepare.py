"""prepare: clean, dedup, split, augment, rejects and a manifest that reconciles."""

import json
import random

import pytest

from tuneforge.data.clean import Cleaner, redact_pii
from tuneforge.data.lineage import dataset_fingerprint, file_sha256
from tuneforge.data.prepare import prepare
from tuneforge.data.prepare_config import load_prepare_config
from tuneforge.data.readers import read_examples
from tuneforge.errors import ConfigError, DataError

WORDS = (
    "account password order refund delivery invoice printer laptop screen battery charger warranty shipping address"
).split()


def _sentence(rng, n=30):
    return " ".join(rng.choice(WORDS) + str(rng.randrange(1000)) for _ in range(n))


def _chat(u, a, **meta):
    row = {"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]}
    return {**row, **meta}


def _write(path, rows, extra=""):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n" + extra)
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def chat_file(tmp_path):
    rng = random.Random(1)
    rows = [_chat(_sentence(rng), _sentence(rng), customer=f"c{i % 25}") for i in range(300)]
    near = json.loads(json.dumps(rows[10]))
    near["messages"][1]["content"] += " thanks"  # one extra shingle in 61: Jaccard ~0.98
    rows += [
        rows[3],
        _chat(rows[4]["messages"][0]["content"].upper(), rows[4]["messages"][1]["content"]),
        near,
        _chat("hi", "   "),
        _chat("<b>Call</b> me on +44 20 7946 0958 or a.b@example.com", "Done &amp; dusted"),
    ]
    return _write(tmp_path / "chat.jsonl", rows, extra="{broken\n")


def test_reconciles_and_writes_rejects_and_duplicates(chat_file, tmp_path):
    cfg = load_prepare_config(chat_file, ["clean.strip_html=true", "clean.redact_pii=[email,phone,card]"])
    m = prepare(cfg, tmp_path / "out")
    assert m["counts"] == {"read": 306, "kept": 301, "rejected": 2, "duplicates": 3, "augmented": 0, "reconciled": True}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        [
            "train.jsonl",
            "validation.jsonl",
            "test.jsonl",
            "rejects.jsonl",
            "duplicates.jsonl",
            "cleaning_diffs.jsonl",
            "manifest.json",
        ]
    )  # no temp files left
    dedup = m["steps"][2]
    assert (dedup["exact_removed"], dedup["near_removed"]) == (2, 1)
    rejects = _read(tmp_path / "out" / "rejects.jsonl")
    assert [(r["line"], r["reasons"][0]["kind"]) for r in rejects] == [(304, "empty_content"), (306, "invalid_json")]
    dups = _read(tmp_path / "out" / "duplicates.jsonl")
    assert [(d["line"], d["kind"], d["duplicate_of"]["line"]) for d in dups] == [
        (301, "exact", 4),
        (302, "exact", 5),
        (303, "near", 11),
    ]
    assert 0.85 <= dups[2]["similarity"] < 1
    clean = m["steps"][1]["counts"]
    assert (clean["email"], clean["phone"], clean["html_stripped"]) == (1, 1, 2)
    texts = [
        msg["content"]
        for split in ("train", "validation", "test")
        for r in _read(tmp_path / "out" / f"{split}.jsonl")
        for msg in r["messages"]
    ]
    assert "Call me on [PHONE] or [EMAIL]" in texts and "Done & dusted" in texts


def test_split_ratios_seed_and_determinism(chat_file, tmp_path):
    m1 = prepare(load_prepare_config(chat_file), tmp_path / "a")
    m2 = prepare(load_prepare_config(chat_file), tmp_path / "b")
    m3 = prepare(load_prepare_config(chat_file, ["split.seed=7"]), tmp_path / "c")
    assert m1["steps"][3]["examples"] == {"train": 241, "validation": 30, "test": 30}
    assert m1["output_hash"] == m2["output_hash"] != m3["output_hash"]
    assert m1["outputs"]["train.jsonl"]["sha256"] == file_sha256(tmp_path / "a" / "train.jsonl")


def test_no_test_example_leaks_into_train(chat_file, tmp_path):
    prepare(load_prepare_config(chat_file), tmp_path / "out")
    from tuneforge.data.hashing import normalise

    def keys(split):
        return {normalise(r["messages"][0]["content"]) for r in _read(tmp_path / "out" / f"{split}.jsonl")}

    assert not keys("train") & keys("test") and not keys("train") & keys("validation")


def test_group_split_keeps_groups_together(chat_file, tmp_path):
    m = prepare(load_prepare_config(chat_file, ["split.group_by=customer"]), tmp_path / "out")
    groups = {
        s: {r["metadata"].get("customer") for r in _read(tmp_path / "out" / f"{s}.jsonl")} - {None}
        for s in ("train", "validation", "test")
    }
    assert (
        not groups["train"] & groups["test"]
        and not groups["train"] & groups["validation"]
        and not groups["validation"] & groups["test"]
    )
    assert m["steps"][3]["ungrouped"] == 1  # the kept record without a customer (its upper-case twin is a duplicate)


def test_stratified_by_label(tmp_path):
    rng = random.Random(0)
    rows = [{"text": _sentence(rng, 8), "label": "rare" if i % 10 == 0 else "common"} for i in range(400)]
    m = prepare(load_prepare_config(_write(tmp_path / "c.jsonl", rows)), tmp_path / "out")
    labels = m["steps"][3]["labels"]
    assert labels == {
        "train": {"common": 288, "rare": 32},
        "validation": {"common": 36, "rare": 4},
        "test": {"common": 36, "rare": 4},
    }


def test_augment_only_train_and_marked(chat_file, tmp_path):
    synonyms = tmp_path / "syn.yaml"
    synonyms.write_text("hello: [hi, greetings]\n")
    m = prepare(
        load_prepare_config(chat_file, ["augment.enabled=true", "augment.copies=2", f"augment.synonyms={synonyms}"]),
        tmp_path / "out",
    )
    train = _read(tmp_path / "out" / "train.jsonl")
    augmented = [r for r in train if r["metadata"].get("augmented")]
    assert len(augmented) == 2 * 241 == m["counts"]["augmented"] == m["outputs"]["train.jsonl"]["augmented"]
    assert m["outputs"]["train.jsonl"]["examples"] == 3 * 241
    for split in ("validation", "test"):
        assert not any(r.get("metadata", {}).get("augmented") for r in _read(tmp_path / "out" / f"{split}.jsonl"))
    originals = {r["metadata"]["source_line"]: r for r in train if not r["metadata"].get("augmented")}
    for r in augmented:  # only the user side changes
        assert r["messages"][1] == originals[r["metadata"]["augmented_from_line"]]["messages"][1]


def test_fingerprint_points_at_prepared_manifest(chat_file, tmp_path):
    m = prepare(load_prepare_config(chat_file), tmp_path / "out")
    fp = dataset_fingerprint(tmp_path / "out" / "train.jsonl")
    assert fp["prepared"]["output_hash"] == m["output_hash"] and fp["prepared"]["unchanged"]
    assert m["inputs"][0]["sha256"] == file_sha256(chat_file) == dataset_fingerprint(chat_file)["sha256"]
    assert "prepared" not in dataset_fingerprint(chat_file)
    (tmp_path / "out" / "train.jsonl").write_text("{}\n")
    assert dataset_fingerprint(tmp_path / "out" / "train.jsonl")["prepared"]["unchanged"] is False


def test_refuses_to_overwrite_and_config_errors(chat_file, tmp_path):
    prepare(load_prepare_config(chat_file), tmp_path / "out")
    with pytest.raises(DataError, match="is a prepared dataset"):
        read_examples(tmp_path / "out")
    with pytest.raises(DataError, match="already holds"):
        prepare(load_prepare_config(chat_file), tmp_path / "out")
    cfg_path = tmp_path / "prep.yaml"
    cfg_path.write_text("inputs: [chat.jsonl]\ndedup: {thresold: 0.9}\nsplit: {train: 0.5}\n")
    with pytest.raises(ConfigError) as err:
        load_prepare_config(cfg_path)
    wheres = sorted(p.where for p in err.value.problems)
    assert wheres == [f"{cfg_path}: dedup.thresold", f"{cfg_path}: split"]
    cfg_path.write_text("inputs: [chat.jsonl]\ndedup: {threshold: 0.9}\n")
    assert load_prepare_config(cfg_path).inputs == [chat_file]  # relative to the config file


def test_cleaner_details():
    c = Cleaner(nfkc=True, whitespace="collapse")  # the opt-in, meaning-changing steps
    assert c.text("ｆｕｌｌ\u200bwidth\t tabs  \r\n\n\n\nend  ") == "fullwidth tabs\n\nend"
    counts = __import__("collections").Counter()
    assert (
        redact_pii("card 4111-1111-1111-1111, not 1234 5678 9012 3456, date 2024-01-02", counts)
        == "card [CARD], not 1234 5678 9012 3456, date 2024-01-02"
    )
    assert counts == {"card": 1}


def test_a_fixed_test_set_is_kept_whole_and_its_duplicates_leave_the_training_data(tmp_path):
    rng = random.Random(5)
    fixed = [_chat(_sentence(rng), _sentence(rng)) for _ in range(20)]
    pool = [_chat(_sentence(rng), _sentence(rng)) for _ in range(100)]
    near = json.loads(json.dumps(fixed[7]))
    near["messages"][1]["content"] += " thanks"  # a near copy of a test example
    test_file = _write(tmp_path / "heldout.jsonl", [*fixed, fixed[0]])  # a repeat inside the test set stays
    pool_file = _write(tmp_path / "pool.jsonl", [*pool[:50], fixed[2], *pool[50:], near])
    m = prepare(load_prepare_config(pool_file, [f"test_inputs={json.dumps([str(test_file)])}"]), tmp_path / "out")
    assert [r["messages"] for r in _read(tmp_path / "out" / "test.jsonl")] == [
        r["messages"] for r in [*fixed, fixed[0]]
    ]  # whole, in order
    steps = {s["name"]: s for s in m["steps"]}
    assert (steps["dedup"]["exact_removed"], steps["dedup"]["near_removed"]) == (1, 1)
    dups = _read(tmp_path / "out" / "duplicates.jsonl")
    assert {(d["file"].endswith("pool.jsonl"), d["duplicate_of"]["file"].endswith("heldout.jsonl")) for d in dups} == {
        (True, True)
    }
    train, val = _read(tmp_path / "out" / "train.jsonl"), _read(tmp_path / "out" / "validation.jsonl")
    assert len(train) + len(val) == 100 and 8 <= len(val) <= 14  # 0.8 : 0.1 of the pool, renormalised
    assert not {json.dumps(r["messages"]) for r in train + val} & {json.dumps(r["messages"]) for r in fixed}
    assert m["counts"]["reconciled"] and [i["role"] for i in m["inputs"]] == ["test", "pool"]


def test_a_fixed_test_set_with_group_by_is_refused(tmp_path):
    path = _write(tmp_path / "d.jsonl", [_chat("a", "b")])
    with pytest.raises(ConfigError, match="test_inputs with split.group_by"):
        load_prepare_config(path, [f"test_inputs={json.dumps([str(path)])}", "split.group_by=customer"])


def test_default_cleaning_is_reported_step_by_step_with_diffs(tmp_path):
    rows = [_chat("cafe\u0301 ?", "line one   \r\nline two\r\n    indented  code"), _chat("zero\u200bwidth", "ok")]
    m = prepare(
        load_prepare_config(
            _write(tmp_path / "d.jsonl", rows), ["split.train=1", "split.validation=0", "split.test=0"]
        ),
        tmp_path / "out",
    )
    counts = m["steps"][1]["counts"]
    assert {k: counts[k] for k in ("unicode_nfc", "line_endings", "whitespace", "control_chars", "texts_changed")} == {
        "unicode_nfc": 1,
        "line_endings": 1,
        "whitespace": 1,
        "control_chars": 1,
        "texts_changed": 3,
    }
    [a, b] = _read(tmp_path / "out" / "train.jsonl")
    assert (
        a["messages"][0]["content"] == "café ?"
        and a["messages"][1]["content"] == "line one\nline two\n    indented  code"
    )
    assert b["messages"][0]["content"] == "zerowidth"
    diffs = {d["step"]: d for d in _read(tmp_path / "out" / "cleaning_diffs.jsonl")}
    assert set(diffs) == {"unicode_nfc", "line_endings", "whitespace", "control_chars"}
    assert (
        diffs["whitespace"]["before"] == "line one   \nline two\n    indented  code"
        and diffs["whitespace"]["line"] == 1
    )
    assert diffs["control_chars"]["before"] == "zero\u200bwidth" and diffs["control_chars"]["after"] == "zerowidth"


def test_meaningful_format_characters_are_kept():
    c = Cleaner()
    for text in (
        "می\u200cخواهم",
        "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
        "abc \u200f\u05d0",
    ):
        assert c.text(text) == text
    assert Cleaner(whitespace="keep").text("a  \n") == "a  \n"
