"""Generalisation and forgetting.

* Perplexity on general held-out text before and after fine-tuning: a rise means the tune
  overwrote general ability (catastrophic forgetting). For the demo model the general text
  is generated with a seed the pretraining never saw; other models need a file.
* The train/validation loss gap over the run's metrics.jsonl: validation loss rising from
  its best while training loss keeps falling is the overfitting signature.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from tuneforge.config import RunConfig
from tuneforge.data.tokenize import Encoded
from tuneforge.errors import DataError, Problem
from tuneforge.eval.bootstrap import Interval, ratio_ci
from tuneforge.eval.compare import sequence_nll
from tuneforge.train.progress import EvalDone, TrainStep
from tuneforge.train.rundir import RunDir

HELD_OUT_SEED = 1001  # the demo pretraining corpus uses seed 0 (tuneforge.train.pretrain)
OVERFIT_RISE = 0.02  # validation loss 2% above its best counts as rising
FORGETTING_RISE_PERCENT = 10.0  # general-text perplexity this much above the base's counts as forgetting


def general_texts(cfg: RunConfig, n: int = 200) -> tuple[list[str], str] | None:
    """(documents, source description), or None when there is no general text for this model."""
    if cfg.eval.general_text is not None:
        return read_texts(Path(cfg.eval.general_text)), str(cfg.eval.general_text)
    if cfg.model.name == "demo":
        from tuneforge.data.synthetic import general_corpus

        return general_corpus(n, HELD_OUT_SEED), f"generated general corpus (seed {HELD_OUT_SEED}, {n} documents)"
    return None


def read_texts(path: Path) -> list[str]:
    """One document per line, or JSONL records with a "text" field."""
    if not path.exists():
        raise DataError(
            f"general text file not found: {path}",
            [
                Problem(
                    "eval.general_text",
                    "no such file",
                    "give a .txt (one document per line) or .jsonl with a text field",
                )
            ],
        )
    docs = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line.startswith("{"):
            line = str(json.loads(line).get("text", ""))
        if line:
            docs.append(line)
    if not docs:
        raise DataError(
            f"no text in {path}", [Problem("eval.general_text", "the file is empty", "add documents, one per line")]
        )
    return docs


def text_nll(
    model, tokenizer, texts: list[str], batch_size: int = 16, max_length: int = 512
) -> tuple[list[float], list[int]]:
    """Summed next-token loss and predicted-token count of each document."""
    feats = []
    for t in texts:
        ids = tokenizer(t, add_special_tokens=False)["input_ids"][:max_length]
        feats.append(Encoded(ids, ids))
    return sequence_nll(model, feats, batch_size, tokenizer.pad_token_id)


def perplexity_interval(sums: list[float], counts: list[int], samples: int, confidence: float) -> dict[str, float]:
    loss = ratio_ci(sums, counts, samples, confidence)
    return Interval(*(math.exp(min(v, 50.0)) for v in (loss.mean, loss.ci_low, loss.ci_high))).to_dict()


def forgetting_summary(general: dict[str, dict[str, float]], source: str) -> dict[str, Any]:
    """Perplexity per model on general text, and each fine-tuned model's change against the base."""
    base = general.get("base")
    changes = {}
    for name, ppl in general.items():
        if name != "base" and base:
            changes[name] = round(100 * (ppl["mean"] / base["mean"] - 1), 2)  # % change of perplexity
    return {
        "source": source,
        "perplexity": general,
        "change_percent_vs_base": changes,
        "forgetting": {name: pct > FORGETTING_RISE_PERCENT for name, pct in changes.items()},
    }


def loss_curves(run_dir: Path) -> dict[str, list]:
    """Training and validation loss by step from the run's events."""
    events = RunDir(run_dir).read_events()
    return {
        "train": [(e.step, e.loss) for e in events if isinstance(e, TrainStep)],
        "validation": [(e.step, e.val_loss) for e in events if isinstance(e, EvalDone)],
    }


def overfitting(curves: dict[str, list]) -> dict[str, Any]:
    """The train/validation gap at each validation step and whether the run overfit."""
    train, val = curves["train"], curves["validation"]
    if not train or not val:
        return {"gap": [], "overfitting": None, "reason": "the run logged no validation loss"}
    gap = []
    for step, v in val:  # training loss: mean of the logged steps since the previous validation
        prev = max([s for s, _ in val if s < step], default=0)
        window = [loss for s, loss in train if prev < s <= step] or [min(train, key=lambda t: abs(t[0] - step))[1]]
        gap.append(
            {
                "step": step,
                "train_loss": round(sum(window) / len(window), 4),
                "val_loss": round(v, 4),
                "gap": round(v - sum(window) / len(window), 4),
            }
        )
    best = min(gap, key=lambda g: g["val_loss"])
    last = gap[-1]
    rising = last["val_loss"] > best["val_loss"] * (1 + OVERFIT_RISE) and last["train_loss"] < best["train_loss"]
    reason = (
        f"validation loss rose from {best['val_loss']:.3f} (step {best['step']}) to {last['val_loss']:.3f} "
        f"while training loss fell to {last['train_loss']:.3f}"
        if rising
        else (
            f"validation loss is within {100 * OVERFIT_RISE:.0f}% of its best "
            f"({best['val_loss']:.3f} at step {best['step']})"
        )
    )
    return {"gap": gap, "best_step": best["step"], "overfitting": rising, "reason": reason}
