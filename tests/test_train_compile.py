"""train.compile: regional torch.compile of the decoder layers (auto decides from the run's length)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers import make_config
from tuneforge.config import TrainSection, validate_config
from tuneforge.errors import ConfigError
from tuneforge.methods.peft_family import LoraMethod
from tuneforge.train import compile as layer_compile

CPU = torch.device("cpu")


def _manifest(run) -> dict:
    return json.loads((run / "manifest.json").read_text())


def test_bad_value_is_a_located_config_error(tmp_path):
    (tmp_path / "t.jsonl").write_text("")
    with pytest.raises(ConfigError) as info:
        validate_config({"data": {"train": str(tmp_path / "t.jsonl")}, "train": {"compile": "fast"}}, "run.yaml")
    assert "run.yaml: train.compile" in str(info.value) and "'fast'" in str(info.value)


def test_yaml_on_off_booleans_mean_on_off():
    assert TrainSection(compile=True).compile == "on" and TrainSection(compile=False).compile == "off"
    assert TrainSection().compile == "auto"


def test_auto_pays_only_for_long_runs():
    minute = 60.0
    assert not layer_compile.decide("auto", CPU, False, 10 * minute, warm=False).enabled  # never 3.5 min of 10
    assert not layer_compile.decide("auto", CPU, False, 40 * minute, warm=False).enabled  # 360 s < 2 x 210 s
    assert layer_compile.decide("auto", CPU, False, 60 * minute, warm=False).enabled
    assert layer_compile.decide("auto", CPU, False, 10 * minute, warm=True).enabled  # 90 s saved >= 2 x 30 s
    plan = layer_compile.decide("auto", CPU, False, 40 * minute, warm=False)
    assert plan.estimate["cache"] == "cold" and "does not pay" in plan.why
    hour = 60 * minute
    assert not layer_compile.decide("auto", torch.device("cuda"), False, 10 * hour, warm=True).enabled
    assert not layer_compile.decide("auto", CPU, True, 10 * hour, warm=True).enabled  # several processes
    assert not layer_compile.decide("auto", CPU, False, None, warm=True).enabled
    assert layer_compile.decide("on", CPU, True, 1.0, warm=False).enabled
    assert not layer_compile.decide("off", CPU, False, 10 * hour, warm=True).enabled


def test_run_estimate_follows_flops():
    from tuneforge.train.utilisation import ModelWork

    work = ModelWork(matmul_params=10**6, trained_matmul_params=0, layers=2, hidden=64)
    peak = {"flops_per_s": 1e9}
    one = layer_compile.estimate_run_seconds(work, peak, [100, 300], steps=10, examples_per_step=8)
    assert one == pytest.approx(10 * work.flops(1600, 8 * 50_000) / (1e9 * layer_compile.EAGER_SHARE))
    assert layer_compile.estimate_run_seconds(work, peak, [], 10, 8) is None
    assert layer_compile.estimate_run_seconds(work, None, [100], 10, 8) is None


def test_auto_on_a_short_run_chooses_off(tiny_model_dir, support_data, tmp_path):
    from tuneforge.train.recipe import train

    cfg = make_config(tiny_model_dir, support_data, tmp_path / "run", max_steps=2, eval_every=100, save_every=100)
    train(cfg, progress=False)
    record = _manifest(tmp_path / "run")["compile"]
    assert record["setting"] == "auto" and record["used"] is False and "does not pay" in record["why"]
    assert record["estimate"]["eager_run_s"] < 60


def test_a_broken_compiler_falls_back_with_a_warning(tiny_model_dir, support_data, tmp_path, monkeypatch):
    from tuneforge.train.recipe import train

    monkeypatch.setattr(layer_compile, "compiler_failure", lambda: "CalledProcessError: no C++ compiler")
    cfg = make_config(
        tiny_model_dir, support_data, tmp_path / "run", max_steps=2, eval_every=100, save_every=100, compile="on"
    )
    messages = []
    train(cfg, progress=False, on_event=lambda e: messages.append(getattr(e, "text", "")))
    record = _manifest(tmp_path / "run")["compile"]
    assert record["used"] is False and "no C++ compiler" in record["warning"]
    assert any("training eagerly" in str(m) for m in messages)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "full_checkpointed"])
def test_compiled_layers_train_the_same_loss_curve(tiny_model_dir, support_data, tmp_path, method):
    """fp32, dropout 0: the compiled layers fuse the same arithmetic (float noise only); gradient checkpointing too."""
    from tuneforge.config import FullMethod
    from tuneforge.train.recipe import train

    extra = {"gradient_checkpointing": True} if method == "full_checkpointed" else {}
    chosen = FullMethod() if method == "full_checkpointed" else LoraMethod(r=4, alpha=8, dropout=0.0)
    losses, records = {}, {}
    for setting in ("off", "on"):
        out = tmp_path / setting
        cfg = make_config(
            tiny_model_dir,
            support_data,
            out,
            method=chosen,
            max_steps=3,
            eval_every=100,
            save_every=100,
            lr=1e-3,
            compile=setting,
            **extra,
        )
        losses[setting] = train(cfg, progress=False).losses
        records[setting] = _manifest(out)["compile"]
    assert records["on"]["used"] is True and records["on"]["layers"] == 2 and records["on"]["compile_s"] > 0
    assert records["off"]["used"] is False
    assert losses["on"] == pytest.approx(losses["off"], rel=1e-4)
