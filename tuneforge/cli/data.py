"""`tuneforge data ...`: validate, prepare and report on training data (thin over tuneforge.data)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tuneforge.data.validate import ValidationReport, validate_file
from tuneforge.errors import TuneforgeError

app = typer.Typer(help="Validate, prepare and report on training data.", no_args_is_help=True)
console = Console(soft_wrap=True)
err_console = Console(stderr=True)


def _fail(exc: TuneforgeError) -> None:
    err_console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
    raise typer.Exit(2)


def _labels(spec: Optional[str]) -> Optional[list[str]]:
    return [x.strip() for x in spec.split(",") if x.strip()] if spec else None


@app.command()
def validate(
    file: Path = typer.Argument(..., help="A data file or a folder of data files."),
    format: str = typer.Option("auto", "--format", "-f", help="chat, prompt_completion, alpaca, sharegpt, text, classification, tokens, preference, or auto."),
    map: Optional[str] = typer.Option(None, "--map", help="Read other column names: ours=theirs,... e.g. text=body,label=stars."),
    labels: Optional[str] = typer.Option(None, "--labels", help="Allowed labels (comma-separated); other labels are errors."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model or tokenizer folder: enables the context-window check."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Context window in tokens (default: the tokenizer's)."),
    min_examples: int = typer.Option(10, "--min-examples", help="Fewer valid examples than this is an error."),
    max_issues: int = typer.Option(1000, "--max-issues", help="List at most this many errors and warnings (all are counted)."),
    output: str = typer.Option("text", "--output", "-o", help="text or json."),
) -> None:
    """Check a data file and list every problem with file, line and field; exit 1 on errors."""
    try:
        report = validate_file(file, format, mapping=map, labels=_labels(labels), tokenizer=model, max_tokens=max_tokens,
                               min_examples=min_examples, max_issues=max_issues)
    except TuneforgeError as exc:
        _fail(exc)
    if output == "json":
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print_validation(report)
    raise typer.Exit(0 if report.ok else 1)


def _print_validation(report: ValidationReport) -> None:
    for issue in report.errors + report.warnings:
        colour = "red" if issue.severity == "error" else "yellow"
        fix = f" [dim]({issue.fix})[/dim]" if issue.fix else ""
        console.print(f"[{colour}]{issue.severity}[/{colour}] {issue.where}: [bold]{issue.kind}[/bold] {issue.message}{fix}", highlight=False)
    if report.truncated:
        console.print(f"[dim]... only the first {report.max_issues} errors and warnings are listed (use --max-issues)[/dim]")
    table = Table(title=f"{report.file} ({report.format or 'unknown format'}): {report.valid}/{report.records} valid")
    table.add_column("kind")
    table.add_column("severity")
    table.add_column("count", justify="right")
    for kind, n in sorted(report.error_counts.items()):
        table.add_row(kind, "[red]error[/red]", str(n))
    for kind, n in sorted(report.warning_counts.items()):
        table.add_row(kind, "[yellow]warning[/yellow]", str(n))
    console.print(table)
    for check in report.skipped_checks:
        console.print(f"[dim]skipped: {check}[/dim]")
    console.print("[green]OK[/green]" if report.ok else f"[red]FAILED[/red]: {sum(report.error_counts.values())} error(s)")
