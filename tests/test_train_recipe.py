"""The training recipe end to end on a tiny Llama: artifacts, loss, golden values, resume,
gradient accumulation, NaN handling, early stopping."""

from __future__ import annotations

import json

import pytest

from helpers import make_config
from tuneforge.config import FullMethod
from tuneforge.errors import ConfigError, TrainingError
from tuneforge.train import train


def read_metrics(run_dir, kind):
    return [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["type"] == kind]


def test_lora_run_writes_the_run_directory_and_learns(tiny_model_dir, support_data, tmp_path):
    cfg = make_config(
        tiny_model_dir, support_data, tmp_path / "run", max_steps=30, eval_every=10, save_every=10, lr=1e-2
    )
    result = train(cfg, progress=False)

    run = result.run_dir
    assert result.status == "completed" and result.steps == 30
    assert (run / "config.yaml").exists() and (run / "adapter" / "adapter_config.json").exists()
    assert (run / "adapter" / "adapter_model.safetensors").exists() and (run / "adapter" / "tokenizer.json").exists()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert len(manifest["datasets"]["train"]["sha256"]) == 64 and manifest["base_model"]["weights_sha256"]
    assert manifest["seed"] == 7 and 0 < manifest["params"]["trainable_share"] < 0.2
    assert manifest["memory"]["peak_rss_bytes"] > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-0000020",
        "step-0000030",
    ]  # keep_checkpoints=2
    losses = result.losses
    assert sum(losses[-5:]) / 5 < 0.95 * sum(losses[:5]) / 5, losses  # LoRA on a random 2-layer model learns slowly
    evals = read_metrics(run, "eval")
    assert [e["step"] for e in evals] == [10, 20, 30] and evals[-1]["val_loss"] < evals[0]["val_loss"]


# Losses of a fixed tiny run (full fine-tuning, seed 7, fp32, 2 threads); they pin the
# numerics of tokenization, label masking, loss normalisation and the optimizer step.
# (Since issue 12 the "\n" the ChatML template writes after <|im_end|> is no longer trained; since
# issue 14 the support-desk data changed four product facts so that every answer's fact is unique,
# which changes the tokenizer and the examples: with the old data these values still hold the old ones.)
GOLDEN_LOSSES = [6.274532, 6.096475, 5.928073, 5.899241]


def test_golden_losses(tiny_model_dir, support_data, tmp_path):
    cfg = make_config(tiny_model_dir, support_data, tmp_path / "run", method=FullMethod(), max_steps=4, lr=1e-3)
    losses = train(cfg, progress=False).losses
    assert losses == pytest.approx(GOLDEN_LOSSES, abs=2e-4), losses


def test_resume_continues_exactly(tiny_model_dir, support_data, tmp_path):
    full = train(make_config(tiny_model_dir, support_data, tmp_path / "a", save_every=2), progress=False)

    calls = {"n": 0}

    def stop_after_three_steps():
        calls["n"] += 1
        return calls["n"] > 3

    cfg = make_config(tiny_model_dir, support_data, tmp_path / "b", save_every=2)
    first = train(cfg, should_stop=stop_after_three_steps, progress=False)
    assert first.status == "stopped" and first.steps == 3 and not (tmp_path / "b" / "adapter").exists()
    second = train(cfg, resume=True, progress=False)
    assert second.status == "completed" and second.steps == 6
    assert first.losses + second.losses == pytest.approx(full.losses, abs=1e-6)


def test_gradient_accumulation_matches_one_large_batch(tiny_model_dir, support_data, tmp_path):
    big = train(
        make_config(tiny_model_dir, support_data, tmp_path / "a", method=FullMethod(), max_steps=3, batch_size=8),
        progress=False,
    )
    small = train(
        make_config(
            tiny_model_dir, support_data, tmp_path / "b", method=FullMethod(), max_steps=3, batch_size=4, grad_accum=2
        ),
        progress=False,
    )
    assert small.losses == pytest.approx(big.losses, abs=1e-5)


def test_non_finite_loss_stops_with_clear_error_and_keeps_checkpoint(
    tiny_model_dir, support_data, tmp_path, monkeypatch
):
    import tuneforge.train.recipe as recipe

    real = recipe._accumulate
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, n = real(*args, **kwargs)
        return (float("nan"), n) if calls["n"] == 4 else (loss, n)

    monkeypatch.setattr(recipe, "_accumulate", poisoned)
    cfg = make_config(tiny_model_dir, support_data, tmp_path / "run", save_every=3)
    with pytest.raises(TrainingError, match="nan at step 4"):
        train(cfg, progress=False)
    assert (tmp_path / "run" / "checkpoints" / "step-0000003" / "trainable.safetensors").exists()
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["status"] == "failed"


def test_early_stopping_keeps_best_weights(tiny_model_dir, support_data, tmp_path, monkeypatch):
    import tuneforge.train.recipe as recipe

    real = recipe.evaluate_loss
    fake = iter([3.0, 2.0, 2.5, 2.6, 2.7])  # best at the 2nd evaluation, then worse twice

    def scripted(*args, **kwargs):
        real(*args, **kwargs)
        return next(fake, 9.0)

    monkeypatch.setattr(recipe, "evaluate_loss", scripted)
    cfg = make_config(
        tiny_model_dir, support_data, tmp_path / "run", max_steps=20, eval_every=1, early_stopping_patience=2
    )
    result = train(cfg, progress=False)
    assert result.status == "early_stopped" and result.steps == 4
    assert (tmp_path / "run" / "adapter").exists()


def test_refuses_to_overwrite_a_run_and_to_resume_nothing(tiny_model_dir, support_data, tmp_path):
    cfg = make_config(tiny_model_dir, support_data, tmp_path / "run", max_steps=1)
    with pytest.raises(ConfigError, match="nothing to resume"):
        train(cfg, resume=True, progress=False)
    train(cfg, progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cfg, progress=False)


@pytest.mark.parametrize("folder", ["adapter", "model", "bottleneck"])
def test_refuses_to_start_over_any_methods_artifact(tiny_model_dir, support_data, tmp_path, folder):
    from tuneforge.methods.registry import artifact_folders

    assert folder in artifact_folders()
    (tmp_path / "run" / folder).mkdir(parents=True)  # an earlier run's artifact, without checkpoints
    with pytest.raises(ConfigError, match="already holds a run"):
        train(make_config(tiny_model_dir, support_data, tmp_path / "run", max_steps=1), progress=False)


def test_the_callback_gets_typed_events_in_order_and_the_status_is_an_enum(tiny_model_dir, support_data, tmp_path):
    from tuneforge.train.progress import CheckpointSaved, EvalDone, Finished, Message, TrainStep
    from tuneforge.train.recipe import RunStatus

    events = []
    cfg = make_config(tiny_model_dir, support_data, tmp_path / "run", max_steps=3, log_every=2)
    result = train(cfg, on_event=events.append, progress=False)
    kinds = [type(e) for e in events]
    assert kinds == [Message, Message, TrainStep, TrainStep, EvalDone, CheckpointSaved, Finished]
    assert [e.step for e in events if isinstance(e, TrainStep)] == [2, 3]  # every log_every and the last step
    assert events[-1].metrics == result.final_metrics and events[-2] == CheckpointSaved(3, events[-2].path)
    assert result.status is RunStatus.COMPLETED and result.status == "completed" and f"{result.status}" == "completed"
    assert [s.value for s in RunStatus] == ["completed", "early_stopped", "stopped", "failed"]
    assert json.loads((result.run_dir / "manifest.json").read_text())["status"] == "completed"
