"""`tuneforge data ...` commands through typer's runner."""

import json

import typer
from typer.testing import CliRunner

from tuneforge.cli.data import app

root = typer.Typer()
root.add_typer(app, name="data")
runner = CliRunner()


def _chat(u, a):
    return json.dumps({"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": a}]})


def test_validate_exit_codes_and_json(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(_chat(f"q{i}", f"answer {i}") for i in range(12)) + "\n")
    result = runner.invoke(root, ["data", "validate", str(good)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + '{"messages": [{"role": "bot", "content": "x"}]}\n')
    result = runner.invoke(root, ["data", "validate", str(bad), "--output", "json"])
    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["error_counts"] == {"unknown_role": 1} and report["errors"][0]["line"] == 13
    assert report["errors"][0]["field"] == "messages[0].role"


def test_validate_bad_arguments_exit_2_without_traceback(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(_chat("q", "answer") + "\n")
    result = runner.invoke(root, ["data", "validate", str(path), "--format", "xml"])
    assert result.exit_code == 2 and "unknown data format" in result.output
    assert "Traceback" not in result.output


def test_prepare_command(tmp_path):
    rows = [_chat(f"question {i} about the invoice {i * 13}", f"the answer is {i}") for i in range(40)] + [
        '{"messages": []}'
    ]
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(rows) + "\n")
    result = runner.invoke(
        root,
        [
            "data",
            "prepare",
            str(src),
            "--out",
            str(tmp_path / "out"),
            "--split",
            "0.5,0.25,0.25",
            "--seed",
            "3",
            "--set",
            "dedup.num_perm=64",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "read 41 = kept 40 + rejected 1 + duplicates 0" in result.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["steps"][3]["examples"] == {"train": 20, "validation": 10, "test": 10}
    assert manifest["config"]["dedup"]["num_perm"] == 64 and manifest["config"]["split"]["seed"] == 3
    again = runner.invoke(root, ["data", "prepare", str(src), "--out", str(tmp_path / "out")])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_report_command_json_and_html(tmp_path):
    from tuneforge.models.demo import build_tokenizer

    tok = build_tokenizer(["hello there question answer"] * 20, vocab_size=280)
    tok.save_pretrained(tmp_path / "tok")
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(_chat(f"question {i}", f"answer {i}") for i in range(12)) + "\n")
    html = tmp_path / "r.html"
    result = runner.invoke(
        root,
        [
            "data",
            "report",
            str(src),
            "--model",
            str(tmp_path / "tok"),
            "--no-hardware",
            "-o",
            "json",
            "--html",
            str(html),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["examples"] == 12 and report["tokens"]["total_tokens"] > 0 and report["cost"]["epochs"] == 3
    assert html.read_text().startswith("<!doctype html>")
    text = runner.invoke(root, ["data", "report", str(src), "--model", str(tmp_path / "tok"), "--no-hardware"])
    assert text.exit_code == 0 and "training cost" in text.output


def _flat(result):
    """Output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_prepare_fails_loudly_above_the_reject_share(tmp_path):
    path = tmp_path / "d.jsonl"
    bad = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "bot", "content": "x"}]})
    path.write_text("\n".join([_chat(f"question {i}", f"answer {i}") for i in range(7)] + [bad] * 3) + "\n")
    result = runner.invoke(root, ["data", "prepare", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "3 of 10 records (30%) were rejected, more than max_reject_share 20%" in _flat(
        result
    )
    assert "unknown_role: 3 record(s), first at" in _flat(result) and "Traceback" not in _flat(result)
    assert (
        not (tmp_path / "out" / "train.jsonl").exists()
        and len((tmp_path / "out" / "rejects.jsonl").read_text().splitlines()) == 3
    )
    result = runner.invoke(
        root, ["data", "prepare", str(path), "--out", str(tmp_path / "ok"), "--max-reject-share", "0.3"]
    )
    assert result.exit_code == 0, result.output
    assert "read 10 = kept 7 + rejected 3" in _flat(result) and "rejected unknown_role: 3" in _flat(result)


def test_prepare_and_report_exit_non_zero_when_nothing_usable_remains(tmp_path):
    media = tmp_path / "media.jsonl"  # a kind refused by name (multimodal), so every record is rejected
    rows = [json.dumps({"prompt": f"q{i}", "completion": f"a{i}", "images": ["a.png"]}) for i in range(4)]
    media.write_text("\n".join(rows) + "\n")
    args = ["data", "prepare", str(media), "--out", str(tmp_path / "out"), "--max-reject-share", "1"]
    result = runner.invoke(root, args)
    assert result.exit_code == 2 and "nothing usable remains: all 4 records were rejected" in _flat(result)
    assert "multimodal records (images, audio, video) are not supported yet: 4 record(s)" in _flat(result)
    result = runner.invoke(root, ["data", "report", str(media), "--no-hardware"])
    assert result.exit_code == 2 and "no usable examples (4 invalid record(s))" in _flat(result)


def test_prepare_prints_skipped_files_unused_fields_and_cleaning_steps(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "README.md").write_text("# About\n")
    rows = [json.dumps({"instruction": f"task {i}", "output": f"done {i}  \r\nok", "id": i}) for i in range(5)]
    (tmp_path / "data" / "a.jsonl").write_text("\n".join(rows) + "\n")
    result = runner.invoke(root, ["data", "prepare", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "skipped: 1 file(s) not read: README.md" in _flat(result)
    assert "unused field 'id': 5 record(s)" in _flat(result)
    assert "line_endings 5" in _flat(result) and "whitespace 5" in _flat(result)
