"""The model card: README.md in every artifact folder (adapter/ or model/), so a folder pushed to a
model hub explains itself.

It is built from the run directory alone - config.yaml (method, hyperparameters), manifest.json
(base model and its weight hash, data fingerprints), the final result in metrics.jsonl and, once
`tuneforge eval` has written it, eval.json (metrics with intervals, verdict, forgetting and slice
warnings). Training writes it; eval rewrites it with the evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tuneforge.methods.registry import artifact_folders

TRAIN_KEYS = (
    "epochs",
    "max_steps",
    "batch_size",
    "grad_accum",
    "lr",
    "scheduler",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "seed",
)
SKIPPED_METRICS = ("loss", "perplexity")  # every approach has them; the card's table shows the task's metrics first


def write_model_card(run_root: Path, artifact: Path | None = None, final: dict[str, Any] | None = None) -> Path | None:
    """Write README.md into the run's artifact folder; returns its path (None when the run has no artifact)."""
    from tuneforge.train.progress import Finished  # tuneforge.train's recipe imports this module
    from tuneforge.train.rundir import RunDir

    run_root = Path(run_root)
    artifact = artifact or next((run_root / f for f in artifact_folders() if (run_root / f).is_dir()), None)
    if artifact is None:
        return None
    run = RunDir(run_root)
    if final is None:
        final = next((e.metrics for e in reversed(run.read_events()) if isinstance(e, Finished)), {})
    config = yaml.safe_load((run_root / "config.yaml").read_text(encoding="utf-8"))
    eval_path = run_root / "eval.json"
    report = json.loads(eval_path.read_text(encoding="utf-8")) if eval_path.exists() else None
    path = Path(artifact) / "README.md"
    path.write_text(render_card(config, run.read_manifest(), final, report, Path(artifact).name), encoding="utf-8")
    return path


def render_card(
    config: dict[str, Any], manifest: dict[str, Any], final: dict[str, Any], report: dict[str, Any] | None, folder: str
) -> str:
    base = manifest.get("base_model", {})
    method, objective = config["method"], config["objective"]
    library = "peft" if folder == "adapter" else "transformers"
    name = str(base.get("name") or config["model"]["name"])
    is_path = Path(name).is_absolute() or Path(name).exists()
    shown = Path(name).name if is_path else name  # a local folder by its name: the card names no server path
    front = {
        **({} if is_path else {"base_model": name}),
        "library_name": library,  # hub ids only in base_model
        "tags": ["tuneforge", method["name"], objective],
    }
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False) + "---",
        f"# {Path(config['output_dir']).name}",
        f"A {method['name']} fine-tune ({objective} objective) of `{shown}`, trained with "
        f"tuneforge {manifest.get('tuneforge_version', '?')}. Files: "
        f"{'a PEFT adapter' if library == 'peft' else 'an HF model folder'} with its tokenizer and chat template.",
        _training(config, manifest, final),
        _data(manifest),
        _evaluation(report),
        _warnings(report, final),
        _intended_use(config, report),
        _loading(library, shown, objective),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _training(config: dict[str, Any], manifest: dict[str, Any], final: dict[str, Any]) -> str:
    rows = [("method." + k, v) for k, v in config["method"].items()]
    rows += [("train." + k, config["train"][k]) for k in TRAIN_KEYS if config["train"].get(k) is not None]
    rows += [("model.max_length", config["model"].get("max_length"))]
    results = [(k, final[k]) for k in ("steps", "trained_tokens", "train_loss", "val_loss") if final.get(k) is not None]
    results += [
        (k, v)
        for k, v in final.items()
        if k not in dict(results) and k not in ("artifact", "tokens_per_s") and isinstance(v, (int, float))
    ]
    out = "## Training\n\n" + _table(("hyperparameter", "value"), rows)
    if results:
        out += "\n\nResult at the end of training:\n\n" + _table(("", "value"), results)
    if manifest.get("status") not in (None, "running", "completed"):
        out += f"\n\nThe run ended {manifest['status']}."
    return out


def _data(manifest: dict[str, Any]) -> str:
    base = manifest.get("base_model", {})
    rows = [
        (split, Path(f.get("path", "?")).name, f.get("examples", ""), f"`{f.get('sha256')}`")
        for split, f in manifest.get("datasets", {}).items()
    ]
    table = _table(("split", "file", "examples", "sha256"), rows) if rows else "No dataset lineage recorded."
    out = "## Data\n\n" + table
    return out + f"\n\nBase model weights sha256: `{base.get('weights_sha256')}`; seed {manifest.get('seed')}."


def _evaluation(report: dict[str, Any] | None) -> str:
    if report is None:
        return (
            "## Evaluation\n\nNot evaluated yet: `tuneforge eval RUN` compares it with the base model and writes "
            "eval.json; this card is rewritten with the results."
        )
    level = f"{100 * report.get('confidence', 0.95):.0f}%"
    names = (
        [m for m in report["approaches"][0]["metrics"] if m not in SKIPPED_METRICS] + list(SKIPPED_METRICS)
        if report.get("approaches")
        else []
    )
    rows = [
        (
            a["name"],
            m,
            _num(a["metrics"][m]["mean"]),
            f"[{_num(a['metrics'][m]['ci_low'])}, {_num(a['metrics'][m]['ci_high'])}]",
        )
        for a in report.get("approaches", [])
        for m in names
        if m in a["metrics"]
    ]
    out = (
        f"## Evaluation\n\n{report.get('test_examples')} test examples ({Path(str(report.get('test_file'))).name});"
        f" {level} bootstrap intervals.\n\n" + _table(("approach", "metric", "mean", f"{level} interval"), rows)
    )
    summary = report.get("verdict", {}).get("summary", [])
    return out + ("\n\nVerdict:\n\n" + "\n".join(f"- {line}" for line in summary) if summary else "")


def _warnings(report: dict[str, Any] | None, final: dict[str, Any]) -> str:
    lines = []
    if report is not None:
        forgetting = report.get("forgetting", {})
        for name, pct in forgetting.get("change_percent_vs_base", {}).items():
            if forgetting.get("forgetting", {}).get(name):
                lines.append(
                    f"Forgetting: {name}'s perplexity on general text ({forgetting.get('source')}) is "
                    f"{pct:+.1f}% vs the base model."
                )
        if "skipped" in forgetting:
            lines.append(f"Forgetting was not measured ({forgetting['skipped']}).")
        lines += [f"Slice: {flag}" for s in report.get("slices", {}).get("fields", {}).values() for flag in s["flags"]]
        overfit = report.get("training_curves", {}).get("overfitting", {})
        if overfit.get("overfitting"):
            lines.append(f"Overfitting: {overfit.get('reason')}")
    else:
        lines.append("Forgetting and per-slice quality are unknown until the model is evaluated.")
    return "## Warnings\n\n" + ("\n".join(f"- {line}" for line in lines) if lines else "None found by the evaluation.")


def _intended_use(config: dict[str, Any], report: dict[str, Any] | None) -> str:
    data = Path(str(config["data"]["train"])).name
    verdict = (report or {}).get("verdict", {})
    worth = verdict.get("fine_tuning_worth_it")
    judged = (
        ""
        if worth is None
        else " The evaluation found fine-tuning "
        + ("worth it" if worth else "not worth it")
        + " against the baselines on its test set."
    )
    return (
        f"## Intended use\n\nThe task of its training data ({config['objective']} on `{data}`), with the same "
        f"prompt format (chat template and system prompt saved with the tokenizer).{judged} It was not "
        "evaluated for other uses, languages or domains; check the evaluation and warnings above before relying on "
        "it, and keep a human in the loop where mistakes are costly."
    )


HEADS = {
    "classification": "SequenceClassification",
    "tokens": "TokenClassification",
    "mlm": "MaskedLM",
    "nsp": "NextSentencePrediction",
}  # the Auto class per objective; the rest are causal LMs


def _loading(library: str, base: str, objective: str) -> str:
    head = HEADS.get(objective, "CausalLM")
    if library == "peft":  # peft has Auto classes for causal LMs and the two classification heads only
        cls = (
            f"AutoPeftModelFor{head}"
            if head in ("CausalLM", "SequenceClassification", "TokenClassification")
            else "AutoPeftModel"
        )
        module = "peft"
    else:
        cls, module = f"AutoModelFor{head}", "transformers"
    code = f'from {module} import {cls}\nmodel = {cls}.from_pretrained("<this folder>")  # base: {base}'
    return (
        f"## How to load\n\n```python\n{code}\n```\n\nor `tuneforge serve` / `tuneforge generate` on the run directory."
    )


def _table(header: tuple[str, ...], rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        text = _num(value)
    else:
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _num(value: float) -> str:
    return f"{value:.4g}"
