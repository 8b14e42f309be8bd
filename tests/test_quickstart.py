"""The demo base model and the README's main command.

The demo model is built only at the edges (`tuneforge models pull-demo`, quickstart, service
start-up); resolving the name 'demo' never builds it. End to end: pretrain, fine-tune, compare.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.data.replay import replay_count
from tuneforge.errors import ModelLoadError
from tuneforge.quickstart import FORGETTING_BUDGET_PERCENT, REPLAY_SHARE

NOT_BUILT = r"model.name: 'demo' is not built yet; run `tuneforge models pull-demo`"


@pytest.fixture
def empty_home(tmp_path, monkeypatch):
    """A TUNEFORGE_HOME without a demo model; the real pretraining raises if anything starts it."""
    import tuneforge.train.pretrain as pretrain

    home = tmp_path / "home"
    monkeypatch.setenv("TUNEFORGE_HOME", str(home))
    monkeypatch.setattr(pretrain, "pretrain", _must_not_pretrain)
    return home


def _must_not_pretrain(*args, **kwargs):
    raise AssertionError("the demo model was pretrained as a side effect")


@pytest.fixture
def fake_pretrain(empty_home, monkeypatch, tiny_tokenizer):
    """Stands in for the minute-long pretraining: writes a 2-layer hidden-32 Llama to the output folder."""
    import tuneforge.train.pretrain as pretrain
    from tuneforge.models.demo import build_tiny_llama, save_model_folder

    calls = []

    def fake(cfg, progress=True):
        calls.append(cfg.output)
        return save_model_folder(
            build_tiny_llama(tiny_tokenizer, hidden=32, layers=2, heads=4), tiny_tokenizer, cfg.output
        )

    monkeypatch.setattr(pretrain, "pretrain", fake)
    return calls


def test_resolving_demo_raises_a_located_error_and_builds_nothing(empty_home):
    from tuneforge.models.loading import load_for_inference, load_tokenizer, resolve_model_path

    for resolve in (resolve_model_path, load_tokenizer, load_for_inference):
        with pytest.raises(ModelLoadError, match=NOT_BUILT) as exc:
            resolve("demo")
        assert exc.value.problems[0].where == "model.name" and "pull-demo" in exc.value.problems[0].fix
    assert not empty_home.exists()  # not even the models folder or a lock file


def test_a_half_built_demo_is_not_resolved(empty_home):
    from tuneforge.models.loading import resolve_model_path

    (empty_home / "models" / "demo").mkdir(parents=True)
    (empty_home / "models" / "demo" / "config.json").write_text("{}")  # pretraining died before `.complete`
    with pytest.raises(ModelLoadError, match=NOT_BUILT):
        resolve_model_path("demo")


def test_train_refuses_a_missing_demo_before_touching_the_run_directory(empty_home, support_data, tmp_path):
    from tuneforge.config import DataSection, LoraMethod, ModelSection, RunConfig, TrainSection
    from tuneforge.train import train

    cfg = RunConfig(
        objective="sft",
        output_dir=tmp_path / "run",
        model=ModelSection(name="demo", max_length=64),
        data=DataSection(train=support_data["train"], validation=support_data["validation"]),
        method=LoraMethod(r=4, alpha=8),
        train=TrainSection(max_steps=1, batch_size=4),
    )
    with pytest.raises(ModelLoadError, match=NOT_BUILT):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists() and not empty_home.exists()


def test_pull_demo_builds_once_and_prints_where_it_lives(fake_pretrain, empty_home):
    from tuneforge.cli.main import app
    from tuneforge.models.loading import resolve_model_path

    runner = CliRunner()
    first = runner.invoke(app, ["models", "pull-demo", "--quiet"])
    assert first.exit_code == 0, first.output
    folder = empty_home / "models" / "demo"
    assert first.stdout.strip() == str(folder)  # the folder is the only stdout
    assert (folder / ".complete").exists() and (folder / "model.safetensors").exists()
    assert resolve_model_path("demo") == str(folder)
    again = runner.invoke(app, ["models", "pull-demo", "--quiet"])
    assert again.exit_code == 0 and again.stdout.strip() == str(folder) and "already built" in again.stderr
    assert fake_pretrain == [folder]  # built once, cached after


def test_service_start_up_builds_the_demo_it_offers(fake_pretrain, empty_home):
    from tuneforge.cli.serve import _build_demo_if_offered
    from tuneforge.models.loading import resolve_model_path
    from tuneforge.serve.settings import ServeSettings

    _build_demo_if_offered(ServeSettings())
    assert fake_pretrain == [empty_home / "models" / "demo"]
    assert resolve_model_path("demo") == str(empty_home / "models" / "demo")


@pytest.mark.slow
def test_quickstart_json_shows_fine_tuning_wins(tmp_path):
    env = {**os.environ, "TUNEFORGE_HOME": str(tmp_path / "home")}
    done = subprocess.run(
        [sys.executable, "-m", "tuneforge.cli.main", "quickstart", "--json", "--out", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # the only stdout is one JSON object
    assert set(summary["base"]) == set(summary["fine_tuned+rag"]) >= {"loss", "token_f1", "exact_match"}
    # the house style is what fine-tuning teaches; the base reads passages in plain sentences
    assert summary["fine_tuned"]["token_f1"] > summary["base"]["token_f1"] + 0.1
    assert summary["fine_tuned"]["loss"] < summary["base"]["loss"]
    for name in ("base", "few_shot", "rag", "fine_tuned", "fine_tuned+rag"):  # both families, with intervals
        assert 0 <= summary[name]["fact_accuracy"] <= 1
        assert set(summary["intervals"][name]["fact_accuracy"]) == {"mean", "ci_low", "ci_high"}
    # the full fine-tune stores the facts (measured: 1.000 fine-tuned and fine-tuned+rag, 0.011 base)
    assert summary["fine_tuned+rag"]["fact_accuracy"] >= 0.8 > summary["base"]["fact_accuracy"] + 0.5
    assert set(summary["winners"]) == {"facts", "style"} and summary["winners"]["facts"]["metric"] == "fact_accuracy"
    raft, replay = summary["training_data"]["retrieval"], summary["training_data"]["replay"]
    assert raft["k"] == 2 and raft["train"]["passages_in_prompts"] > raft["train"]["examples"]
    assert replay["replayed_examples"] == replay_count(replay["task_examples"], REPLAY_SHARE)
    assert set(summary["forgetting"]["change_percent_vs_base"]) == {"fine_tuned"}
    # replay holds general-text perplexity within the budget (measured: -0.9% at share 0.3, +78.3% at 0.1)
    assert summary["forgetting"]["change_percent_vs_base"]["fine_tuned"] <= FORGETTING_BUDGET_PERCENT
    run = Path(summary["run_dir"])
    assert (run / "model" / "model.safetensors").exists() and (run / "manifest.json").exists()  # full fine-tune
    assert (tmp_path / "home" / "models" / "demo" / "model.safetensors").exists()  # cached for the next run
