"""The README's main command, end to end: pretrain the demo model, fine-tune, compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_quickstart_json_shows_fine_tuning_wins(tmp_path):
    env = {**os.environ, "TUNEFORGE_HOME": str(tmp_path / "home")}
    done = subprocess.run([sys.executable, "-m", "tuneforge.cli.main", "quickstart", "--json", "--out", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # the only stdout is one JSON object
    assert set(summary["base"]) == set(summary["fine_tuned"]) >= {"loss", "token_f1", "exact_match"}
    assert summary["fine_tuned"]["token_f1"] > summary["base"]["token_f1"] + 0.3
    assert summary["fine_tuned"]["loss"] < summary["base"]["loss"]
    run = Path(summary["run_dir"])
    assert (run / "adapter" / "adapter_config.json").exists() and (run / "manifest.json").exists()
    assert (tmp_path / "home" / "models" / "demo" / "model.safetensors").exists()  # cached for the next run
