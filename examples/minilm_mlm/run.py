"""Continued MLM pretraining of MiniLM on domain text: validation masked-token loss before and after.

    python examples/minilm_mlm/run.py [--out runs/minilm-mlm]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from tuneforge.config import load_config
from tuneforge.data.readers import read_examples
from tuneforge.models.loading import load_model, load_tokenizer
from tuneforge.objectives import get_objective
from tuneforge.train import evaluate_loss, train

HERE = Path(__file__).parent


def masked_loss(model, cfg, tokenizer) -> float:
    """Validation loss per masked token; masks drawn from a fixed seed so before/after see the same masks."""
    objective = get_objective("mlm")
    features = objective.encode(read_examples(cfg.data.validation), tokenizer, cfg.model.max_length)
    torch.manual_seed(0)
    return evaluate_loss(model, objective, features, 32, tokenizer.pad_token_id, torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/minilm-mlm"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    if not (HERE / "data" / "train.jsonl").exists():
        sys.path.insert(0, str(HERE))
        from make_data import main as make_data

        make_data(HERE / "data")
    cfg = load_config(HERE / "mlm.yaml", [f"output_dir={args.out}"])
    tokenizer = load_tokenizer("minilm")
    before = masked_loss(load_model("minilm", task="masked_lm"), cfg, tokenizer)
    result = train(cfg, progress=False)
    after = masked_loss(load_model(result.run_dir / "model", task="masked_lm"), cfg, tokenizer)
    summary = {"val_masked_loss_before": before, "val_masked_loss_after": after, "perplexity_before": math.exp(before),
               "perplexity_after": math.exp(after), "steps": result.steps, "train_seconds": json.loads((result.run_dir / "manifest.json").read_text())["timings"]["train_s"]}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
