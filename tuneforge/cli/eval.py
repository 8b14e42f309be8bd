"""`tuneforge eval CONFIG|RUN`: was fine-tuning worth it? Every approach on the held-out test split."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table


def _cell(c: dict) -> str:
    return f"{c['mean']:.4g} [{c['ci_low']:.4g}, {c['ci_high']:.4g}]"


def print_table(report: dict, console: Console) -> None:
    metrics = list(report["approaches"][0]["metrics"]) if report["approaches"] else []
    table = Table(
        title=f"{report['test_examples']} held-out test examples · "
        f"mean [{100 * report['confidence']:.0f}% bootstrap CI]"
    )
    for col in ("approach", *metrics, "prompt tok", "latency s", "$/1K req"):
        table.add_column(col, justify="left" if col == "approach" else "right")
    for a in report["approaches"]:
        cost = report["cost"]["approaches"][a["name"]]
        table.add_row(
            a["name"],
            *(_cell(a["metrics"][m]) for m in metrics),
            f"{a['prompt_tokens_per_request']:.0f}",
            f"{a['latency_seconds']:.3f}" if a["latency_seconds"] is not None else "-",
            f"{cost['cost_per_1k_requests']:.4f}",
        )
    console.print(table)
    for line in report["verdict"]["summary"]:
        console.print(f"• {line}", highlight=False)


def eval_command(
    target: Path = typer.Argument(
        ..., help="A run directory, or a YAML run config (its output_dir is the fine-tuned run)."
    ),
    runs: list[Path] | None = typer.Option(
        None, "--run", help="Another run directory to compare (repeatable): LoRA vs full, r=8 vs r=32..."
    ),
    approaches: str | None = typer.Option(
        None,
        help="Comma-separated subset of base,few_shot,rag,fine_tuned,fine_tuned+rag; for classification also "
        "zero_shot_embedding,knn,linear_probe (an encoder's default; chat approaches refused there).",
    ),
    out: Path | None = typer.Option(
        None, help="Folder for eval.json, predictions/ and eval_report.html (default: the run directory)."
    ),
    output: str = typer.Option("table", help="table (rich table + verdict) or json (the eval.json object on stdout)."),
    overrides: list[str] | None = typer.Option(
        None, "--set", help="Config override key=value, e.g. eval.max_examples=50."
    ),
) -> None:
    """Compare base (zero-shot), few-shot, RAG, fine-tuned and fine-tuned+RAG on the test split, with intervals
    (on an encoder classifier: zero-shot embedding similarity, kNN, a linear probe and the fine-tuned heads)."""
    from tuneforge.eval.evaluate import resolve_target, run_eval

    if output not in ("table", "json"):
        raise typer.BadParameter("--output must be table or json")
    err = Console(stderr=True)
    target_ = resolve_target(target, runs or [], overrides or [])
    names = [a.strip() for a in approaches.split(",") if a.strip()] if approaches else None
    report = run_eval(target_, out, names, say=lambda m: err.print(f"[cyan]{m}[/cyan]", highlight=False))
    if output == "json":
        print(json.dumps(report))
        return
    # piped output has no terminal width; rich would squeeze the intervals into 80 columns
    print_table(report, Console() if sys.stdout.isatty() else Console(width=160))
    folder = out or target_.run_dir or target_.cfg.output_dir
    err.print(f"eval.json and eval_report.html in {folder}")


def register(app: typer.Typer) -> None:
    app.command(name="eval")(eval_command)
