"""Two small contracts users see: fine-tuned model ids name the base model (never a server path), and the
unknown-key config error points at a command that exists and lists the keys of that section."""

from __future__ import annotations

import re

import pytest
import yaml
from typer.testing import CliRunner

from tuneforge.cli.main import app
from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.methods.registry import available_methods
from tuneforge.serve.runner import fine_tuned_name
from tuneforge.serve.tables import Job


@pytest.mark.parametrize(
    ("model", "base"),
    [
        ("/srv/models/qwen2.5-0.5b", "qwen2.5-0.5b"),
        ("/srv/models/qwen2.5-0.5b/", "qwen2.5-0.5b"),
        ("~/models/pythia-70m", "pythia-70m"),
        ("./models/opt", "opt"),
        ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B"),
        ("demo", "demo"),
    ],
)
def test_fine_tuned_ids_name_the_base_model_not_its_folder(model, base):
    name = fine_tuned_name(Job(model=model, suffix="support", id="ftjob-0123456789ab"), "team:a")
    assert name == f"ft:{base}:team-a:support:01234567"  # OpenAI's ft:BASE:ORG:SUFFIX:ID, the project as ORG


def test_a_local_folder_given_relatively_is_named_by_its_folder(tmp_path, monkeypatch):
    (tmp_path / "bases" / "my-llama").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert fine_tuned_name(Job(model="bases/my-llama", suffix=None, id="ftjob-x"), "p") == "ft:my-llama:p::x"


def _unknown_key_fix(tmp_path, section: dict) -> str:
    (tmp_path / "train.jsonl").write_text("")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": "train.jsonl"}, **section}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.message == "unknown key"
    return problem.fix


@pytest.mark.parametrize(
    ("section", "expected_keys"),
    [
        ({"model": {"max_lenght": 64}}, ["max_length", "trust_remote_code"]),
        ({"train": {"distributed": {"stratgy": "ddp"}}}, ["grad_accum", "strategy"]),
        ({"method": {"name": "lora", "rank": 4}}, ["target_modules", "quant_type"]),
        ({"epochs": 3}, ["objective", "output_dir", "max_new_tokens"]),
    ],
)
def test_the_unknown_key_advice_runs_and_lists_that_sections_keys(section, expected_keys, tmp_path):
    fix = _unknown_key_fix(tmp_path, section)
    command = re.search(r"`tuneforge ([^`]+)`", fix)
    assert command, fix
    shown = CliRunner().invoke(app, command.group(1).split())
    assert shown.exit_code == 0, shown.output
    for key in expected_keys:
        assert re.search(rf"^  {key} \(", shown.output, re.M), (key, shown.output[:500])


def test_config_help_lists_every_method_and_every_key_with_its_help():
    shown = CliRunner().invoke(app, ["config-help"])
    assert shown.exit_code == 0, shown.output
    for name in available_methods():
        assert f"method (name: {name}):" in shown.output
    assert re.search(r"^  lr \(float, default 0\.0002\)\n      Peak learning rate", shown.output, re.M)
    assert re.search(r"^  train \(Path, required\)", shown.output, re.M)  # data.train
    refused = CliRunner().invoke(app, ["config-help", "trian"])
    assert refused.exit_code != 0 and "trian" in str(refused.exception)
