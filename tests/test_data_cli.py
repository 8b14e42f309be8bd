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
