"""Fine-tune MiniLM for support-desk intents three ways and compare them on held-out test data.

    python examples/minilm_intent/compare.py [--out runs/minilm-intent] [--methods head head_lora full]

Each config in this folder is trained with the same recipe (`tuneforge train` would do the
same); the saved run directory is then reloaded and scored on the test split, whose
phrasings never occur in training. Prints a table and writes results.json under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from tuneforge.config import load_config
from tuneforge.data.readers import read_examples
from tuneforge.models.loading import load_for_inference
from tuneforge.objectives import get_objective
from tuneforge.train import train

HERE = Path(__file__).parent


def score_on_test(run_dir: Path, train_path: Path, test_path: Path, max_length: int) -> dict[str, float]:
    """Accuracy and macro-F1 of the saved artifact (not the in-memory model) on the test file."""
    objective = get_objective("classification")
    objective.prepare(read_examples(train_path))  # the same sorted label set the run used
    model, tokenizer = load_for_inference(run_dir, device=torch.device("cpu"))
    features = objective.encode(read_examples(test_path), tokenizer, max_length)
    return objective.metrics(model, features, 64, tokenizer.pad_token_id, torch.device("cpu"))


def run_one(name: str, out: Path) -> dict:
    cfg = load_config(HERE / f"{name}.yaml", [f"output_dir={out / name}"])
    started = time.perf_counter()
    result = train(cfg, progress=False)
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    test = score_on_test(result.run_dir, cfg.data.train, cfg.data.test, cfg.model.max_length)
    return {"method": cfg.method.name, "test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
            "val_accuracy": result.final_metrics.get("accuracy"), "train_seconds": manifest["timings"]["train_s"],
            "total_seconds": round(time.perf_counter() - started, 1), "steps": result.steps,
            "trainable_params": manifest["params"]["trainable"], "total_params": manifest["params"]["total"],
            "trainable_share": manifest["params"]["trainable_share"], "memory_estimate_bytes": manifest["memory_estimate"]["total"],
            "peak_rss_bytes": manifest["memory"]["peak_rss_bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/minilm-intent"))
    parser.add_argument("--methods", nargs="+", default=["head", "head_lora", "full"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if not (HERE / "data" / "train.jsonl").exists():
        sys.path.insert(0, str(HERE))
        from make_data import main as make_data

        make_data(HERE / "data")
    rows = [run_one(name, args.out) for name in args.methods]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"{'method':<10} {'test acc':>9} {'macro-F1':>9} {'train s':>8} {'trainable':>12} {'share':>8}")
    for r in rows:
        print(f"{r['method']:<10} {r['test_accuracy']:>9.3f} {r['test_macro_f1']:>9.3f} {r['train_seconds']:>8.1f} "
              f"{r['trainable_params']:>12,} {100 * r['trainable_share']:>7.2f}%")


if __name__ == "__main__":
    main()
