"""Config errors name the key and the fix, all at once, and the CLI shows no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuneforge.config import load_config
from tuneforge.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    (tmp_path / "train.jsonl").write_text("")
    return path


def test_valid_config_resolves_paths_and_overrides(tmp_path):
    path = write(tmp_path, "data: {train: train.jsonl}\nmethod: {name: lora, r: 4}\n")
    cfg = load_config(path, ["train.lr=1e-4", "method.alpha=8"])
    assert cfg.data.train == tmp_path / "train.jsonl"
    assert cfg.train.lr == 1e-4 and cfg.method.alpha == 8 and cfg.method.r == 4


def test_every_problem_is_reported_with_its_key(tmp_path):
    path = write(tmp_path, "data: {train: train.jsonl}\ntrain: {lr: fast, epochz: 3}\nmethod: {name: lora, rank: 8}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    text = str(info.value)
    assert "3 problem(s)" in text
    assert "train.lr" in text and "valid number" in text
    assert "train.epochz: unknown key" in text
    assert "method.rank: unknown key" in text


def test_unknown_method_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="method"):
        load_config(write(tmp_path, "data: {train: train.jsonl}\nmethod: {name: lola}\n"))
    with pytest.raises(ConfigError, match="data.validation: file not found"):
        load_config(write(tmp_path, "data: {train: train.jsonl, validation: nope.jsonl}\n"))
    with pytest.raises(ConfigError, match="data: required key is missing"):
        load_config(write(tmp_path, "train: {lr: 0.1}\n"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("data: {train: train.jsonl}\ntrain: {batch_sise: 4}\n", "train.batch_sise: unknown key"),
        ("data: {train: train.jsonl}\ntrain: {epochs: many}\n", "train.epochs"),
        ("data: {train: missing.jsonl}\n", "data.train: file not found"),
    ],
)
def test_cli_prints_one_clear_message_without_traceback(tmp_path, text, expected):
    path = write(tmp_path, text)
    done = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli.main", "train", str(path)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert expected in done.stderr and "Traceback" not in done.stderr
