"""The model card: README.md in the artifact folder of a tiny run - base model, method and hyperparameters,
data fingerprints, intended use; after an evaluation, the eval table with intervals and its warnings."""

from __future__ import annotations

import json

import pytest
import yaml

from helpers import make_config
from tuneforge.export.model_card import render_card, write_model_card
from tuneforge.train.rundir import RunDir


def _eval_report() -> dict:
    interval = lambda mean, lo, hi: {"mean": mean, "ci_low": lo, "ci_high": hi}  # noqa: E731
    approaches = [
        {"name": name, "metrics": {"exact_match": interval(*em), "loss": interval(*loss)}}
        for name, em, loss in (
            ("base", (0.125, 0.0, 0.375), (3.2, 3.0, 3.4)),
            ("fine_tuned", (0.625, 0.25, 0.875), (1.1, 0.9, 1.3)),
        )
    ]
    return {
        "test_file": "/data/test.jsonl",
        "test_examples": 8,
        "confidence": 0.95,
        "approaches": approaches,
        "forgetting": {
            "source": "general.txt",
            "change_percent_vs_base": {"fine_tuned": 23.5},
            "forgetting": {"fine_tuned": True},
        },
        "slices": {"fields": {"product": {"flags": ["fine_tuned: product=router scores 0.200 [0.000, 0.500]"]}}},
        "training_curves": {"overfitting": {"overfitting": False, "reason": "validation loss kept falling"}},
        "verdict": {"summary": ["fine_tuned is best on exact_match."], "fine_tuning_worth_it": True},
    }


def test_a_tiny_run_writes_a_card_that_explains_its_adapter(tiny_model_dir, support_data, tmp_path):
    from tuneforge.train import train

    run_dir = tmp_path / "card-run"
    result = train(make_config(tiny_model_dir, support_data, run_dir, max_steps=2, eval_every=2), progress=False)
    card = (run_dir / "adapter" / "README.md").read_text()
    manifest = RunDir(run_dir).read_manifest()
    assert card.startswith("---\nlibrary_name: peft\n") and "- lora\n- sft\n" in card  # base_model: hub ids only
    assert f"of `{tiny_model_dir.name}`" in card and str(tmp_path) not in card  # no local or server path
    assert f"`{manifest['base_model']['weights_sha256']}`" in card
    for split in ("train", "validation", "test"):
        fingerprint = manifest["datasets"][split]
        assert f"| {split} | {split}.jsonl |" in card and f"`{fingerprint['sha256']}`" in card
    assert "| method.r | 4 |" in card and "| train.lr | 0.005 |" in card and "| train.seed | 7 |" in card
    assert f"| val_loss | {result.final_metrics['val_loss']:.4g} |" in card and "| steps | 2 |" in card
    assert "## Intended use" in card and "sft on `train.jsonl`" in card
    assert "from peft import AutoPeftModelForCausalLM" in card
    assert "Not evaluated yet" in card and "unknown until the model is evaluated" in card

    (run_dir / "eval.json").write_text(json.dumps(_eval_report()))
    assert write_model_card(run_dir) == run_dir / "adapter" / "README.md"  # as `tuneforge eval` does
    card = (run_dir / "adapter" / "README.md").read_text()
    assert "8 test examples (test.jsonl); 95% bootstrap intervals" in card
    assert "| fine_tuned | exact_match | 0.625 | [0.25, 0.875] |" in card and "| base | loss | 3.2 | [3, 3.4] |" in card
    assert "- Forgetting: fine_tuned's perplexity on general text (general.txt) is +23.5% vs the base model." in card
    assert "- Slice: fine_tuned: product=router scores 0.200 [0.000, 0.500]" in card
    assert "Overfitting" not in card and "found fine-tuning worth it" in card
    assert f"| val_loss | {result.final_metrics['val_loss']:.4g} |" in card  # the final result read from metrics.jsonl

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    hub = render_card(
        {**config, "model": {**config["model"], "name": "Qwen/Qwen2.5-0.5B"}},
        {**manifest, "base_model": {**manifest["base_model"], "name": "Qwen/Qwen2.5-0.5B"}},
        {},
        None,
        "adapter",
    )
    assert hub.startswith("---\nbase_model: Qwen/Qwen2.5-0.5B\nlibrary_name: peft\n")
    classifier = render_card({**config, "objective": "classification"}, manifest, {}, None, "model")
    assert "from transformers import AutoModelForSequenceClassification" in classifier


def test_a_run_without_an_artifact_gets_no_card(tmp_path):
    assert write_model_card(tmp_path) is None


def test_the_merged_export_carries_the_card(tiny_model_dir, support_data, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli.main import app
    from tuneforge.train import train

    run_dir = tmp_path / "run"
    train(make_config(tiny_model_dir, support_data, run_dir, max_steps=1), progress=False)
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    card = (out / "README.md").read_text()
    assert "library_name: transformers" in card and "an HF model folder" in card and "| method.r | 4 |" in card


@pytest.mark.slow  # a real evaluation (generation on the tiny model)
def test_tuneforge_eval_rewrites_the_card_with_its_table(tiny_model_dir, support_data, tmp_path):
    from tuneforge.config import EvalSection
    from tuneforge.eval.evaluate import resolve_target, run_eval
    from tuneforge.train import train

    cfg = make_config(tiny_model_dir, support_data, tmp_path / "run", max_steps=2, eval_every=2)
    cfg.eval = EvalSection(max_new_tokens=4, bootstrap_samples=100, latency_samples=0, max_examples=4)
    train(cfg, progress=False)
    report = run_eval(resolve_target(cfg.output_dir), approaches=["base", "fine_tuned"], say=lambda m: None)
    card = (tmp_path / "run" / "adapter" / "README.md").read_text()
    tuned = next(a for a in report["approaches"] if a["name"] == "fine_tuned")["metrics"]["exact_match"]
    assert (
        f"| fine_tuned | exact_match | {tuned['mean']:.4g} | [{tuned['ci_low']:.4g}, {tuned['ci_high']:.4g}] |" in card
    )
    assert "95% bootstrap intervals" in card and "Not evaluated yet" not in card
    assert "Forgetting was not measured" in card  # no eval.general_text: said, not hidden
