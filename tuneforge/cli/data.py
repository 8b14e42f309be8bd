"""`tuneforge data ...`: validate, prepare and report on training data (thin over tuneforge.data)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from tuneforge.data.prepare import prepare as run_prepare
from tuneforge.data.prepare_config import load_prepare_config
from tuneforge.data.validate import ValidationReport, validate_file
from tuneforge.errors import ConfigError, DataError, Problem, TuneforgeError

app = typer.Typer(help="Validate, prepare and report on training data.", no_args_is_help=True)
console = Console(soft_wrap=True)
err_console = Console(stderr=True)


def _fail(exc: TuneforgeError) -> None:
    err_console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
    raise typer.Exit(2)


_INCLUDE_HELP = (
    "Also read folder files matching this glob (repeatable), e.g. '*.md'; a folder is read for data files only."
)
_TEXT_UNIT_HELP = "One record of a .txt/.md file: paragraph (blank-line separated, default), line, or file."


_DATASET_HELP = "With a LLaMA-Factory dataset_info.json: read this dataset (repeatable; default: all it describes)."
_CONFIG_HELP = "A run config: its model (tokenizer), model.max_length, data.overlength, mapping and format apply."


def _source(path: Path, datasets: list[str]) -> Path | str:
    """A dataset_info.json with --dataset names -> its source string (`dataset_info.json#a,b`)."""
    from tuneforge.data.dataset_info import source

    return source(path, datasets) if datasets else path


def _run_config(path: Path | None):
    from tuneforge.config import load_config

    return load_config(path) if path is not None else None


def _labels(spec: str | None) -> list[str] | None:
    return [x.strip() for x in spec.split(",") if x.strip()] if spec else None


@app.command()
def validate(
    file: Path = typer.Argument(..., help="A data file or a folder of data files."),
    format: str = typer.Option(
        "auto",
        "--format",
        "-f",
        help="chat, prompt_completion, alpaca, sharegpt, text, classification, tokens, preference, or auto.",
    ),
    map: str | None = typer.Option(
        None, "--map", help="Read other column names: ours=theirs,... e.g. text=body,label=stars."
    ),
    labels: str | None = typer.Option(
        None, "--labels", help="Allowed labels (comma-separated); other labels are errors."
    ),
    include: list[str] = typer.Option([], "--include", help=_INCLUDE_HELP),
    text_unit: str = typer.Option("paragraph", "--text-unit", help=_TEXT_UNIT_HELP),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Model or tokenizer folder: enables the chat-template and context-window checks."
    ),
    chat_template: str | None = typer.Option(
        None,
        "--chat-template",
        help="As model.chat_template: a built-in template (chatml, llama3, mistral, gemma, phi3, alpaca) or a .jinja "
        "file given to the --model tokenizer (a base model without one), so chats are checked as train renders them.",
    ),
    max_tokens: int | None = typer.Option(
        None, "--max-tokens", help="Context window in tokens (default: the tokenizer's)."
    ),
    max_length: int | None = typer.Option(
        None, "--max-length", help="The run's model.max_length: longer examples are counted (with --overlength)."
    ),
    overlength: str | None = typer.Option(
        None, "--overlength", help="truncate (default), drop or error, as data.overlength, with --max-length."
    ),
    config: Path | None = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    dataset: list[str] = typer.Option([], "--dataset", help=_DATASET_HELP),
    system_prompt: str = typer.Option(
        "keep", "--system-prompt", help="keep, fold or drop system messages, as data.system_prompt."
    ),
    min_examples: int = typer.Option(10, "--min-examples", help="Fewer valid examples than this is an error."),
    max_issues: int = typer.Option(
        1000, "--max-issues", help="List at most this many errors and warnings (all are counted)."
    ),
    output: str = typer.Option("text", "--output", "-o", help="text or json."),
) -> None:
    """Check a data file and list every problem with file, line and field; exit 1 on errors."""
    try:
        cfg = _run_config(config)
        if cfg is not None:
            model, max_length = model or cfg.model.name, max_length or cfg.model.max_length
            chat_template = chat_template or cfg.model.chat_template
            overlength, map = overlength or cfg.data.overlength, map or (cfg.data.mapping or None)
            format = cfg.data.format if format == "auto" else format
        if overlength is not None and overlength not in ("truncate", "drop", "error"):
            raise DataError(
                f"unknown overlength {overlength!r}",
                [Problem("--overlength", f"{overlength!r} is not a choice", "use truncate, drop or error")],
            )
        report = validate_file(
            _source(file, dataset),
            format,
            mapping=map,
            labels=_labels(labels),
            tokenizer=_tokenizer(model, chat_template),
            max_tokens=max_length or max_tokens,
            overlength=(overlength or "truncate") if max_length else None,
            min_examples=min_examples,
            max_issues=max_issues,
            include=include,
            text_unit=text_unit,
            system_prompt=system_prompt,
        )
    except TuneforgeError as exc:
        _fail(exc)
    if output == "json":
        typer.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        _print_validation(report)
    raise typer.Exit(0 if report.ok else 1)


def _tokenizer(model: str | None, chat_template: str | None):
    """The --model name (loaded by validate_file) or, with --chat-template, its tokenizer given that template."""
    if chat_template is None:
        return model
    if model is None:
        raise ConfigError(
            "--chat-template needs the tokenizer it is applied to",
            [Problem("--chat-template", "no --model given", "add --model <base model or tokenizer folder>")],
        )
    from tuneforge.models.chat_templates import BUILTIN
    from tuneforge.models.loading import load_tokenizer

    if chat_template not in BUILTIN and not Path(chat_template).expanduser().is_file():
        raise ConfigError(
            f"unknown chat template {chat_template!r}",
            [
                Problem(
                    "--chat-template",
                    "neither a built-in template nor an existing .jinja file",
                    f"use one of {', '.join(BUILTIN)} or the path of a .jinja file",
                )
            ],
        )
    return load_tokenizer(model, chat_template)


def _print_validation(report: ValidationReport) -> None:
    for issue in report.errors + report.warnings:
        colour = "red" if issue.severity == "error" else "yellow"
        fix = f" [dim]({issue.fix})[/dim]" if issue.fix else ""
        console.print(
            f"[{colour}]{issue.severity}[/{colour}] {issue.where}: [bold]{issue.kind}[/bold] {issue.message}{fix}",
            highlight=False,
        )
    if report.truncated:
        console.print(
            f"[dim]... only the first {report.max_issues} errors and warnings are listed (use --max-issues)[/dim]"
        )
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
    _print_unused(report.unused_fields.to_dict())
    for line in report.refused.lines():
        console.print(f"[red]refused[/red]: {line}", highlight=False)
    if report.length is not None and report.overlength:
        colour = "red" if report.overlength == "error" and report.length.count else "yellow"
        verb = {"truncate": "truncated", "drop": "dropped", "error": "refused"}[report.overlength]
        console.print(
            f"[{colour}]length[/{colour}]: {report.length.line()}; training: {verb} (data.overlength: "
            f"{report.overlength})",
            highlight=False,
        )
    console.print(
        "[green]OK[/green]" if report.ok else f"[red]FAILED[/red]: {sum(report.error_counts.values())} error(s)"
    )


def _print_unused(unused: dict) -> None:
    for key, u in unused.items():
        console.print(
            f"[yellow]unused field[/yellow] '{key}': {u['count']:,} record(s), first at {', '.join(u['first'])} "
            "(kept in metadata, not trained on; --map it or drop it)",
            highlight=False,
        )


@app.command()
def prepare(
    source: Path = typer.Argument(..., help="A prepare config (.yaml) or a data file/folder (default steps)."),
    out: Path = typer.Option(
        ..., "--out", help="Output folder for train/validation/test.jsonl, rejects, duplicates and manifest.json."
    ),
    format: str | None = typer.Option(None, "--format", "-f", help="Record format of the inputs (default: auto)."),
    map: str | None = typer.Option(None, "--map", help="Read other column names: ours=theirs,..."),
    labels: str | None = typer.Option(
        None, "--labels", help="Allowed labels (comma-separated); records with others are rejected."
    ),
    split: str | None = typer.Option(None, "--split", help="train,validation,test ratios, e.g. 0.8,0.1,0.1."),
    test: list[Path] = typer.Option(
        [],
        "--test",
        help="An existing test set (file or folder, repeatable) kept as the test split; "
        "duplicates of it in the data are removed and the data is split into train/validation only.",
    ),
    seed: int | None = typer.Option(None, "--seed", help="Split seed."),
    group_by: str | None = typer.Option(
        None, "--group-by", help="Keep examples sharing this metadata field in one split."
    ),
    near_threshold: float | None = typer.Option(
        None, "--near-threshold", help="MinHash Jaccard threshold for near-duplicates."
    ),
    no_near: bool = typer.Option(False, "--no-near-dedup", help="Only remove exact duplicates."),
    strip_html: bool = typer.Option(False, "--strip-html", help="Replace HTML markup by its text."),
    redact_pii: str | None = typer.Option(None, "--redact-pii", help="Comma-separated: email,phone,card."),
    augment: int | None = typer.Option(None, "--augment", help="Add this many augmented copies per training example."),
    synonyms: Path | None = typer.Option(
        None, "--synonyms", help="Synonym table (YAML/JSON word: [synonyms]) for augmentation."
    ),
    include: list[str] = typer.Option([], "--include", help=_INCLUDE_HELP),
    dataset: list[str] = typer.Option([], "--dataset", help=_DATASET_HELP),
    text_unit: str | None = typer.Option(None, "--text-unit", help=_TEXT_UNIT_HELP),
    max_reject_share: float | None = typer.Option(
        None, "--max-reject-share", help="Fail when more than this share of records is rejected (default 0.2)."
    ),
    nfkc: bool = typer.Option(
        False,
        "--nfkc",
        help="Unicode NFKC instead of NFC: folds full-width CJK punctuation and ² to ASCII (changes text).",
    ),
    whitespace: str | None = typer.Option(
        None, "--whitespace", help="keep, line_ends (default: trailing spaces only) or collapse (breaks code)."
    ),
    set_: list[str] = typer.Option([], "--set", help="Any config key, e.g. --set dedup.num_perm=64 (repeatable)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a prepared dataset already in --out."),
) -> None:
    """Clean, deduplicate, split (and optionally augment) data into a prepared dataset with a manifest."""
    overrides = _prepare_overrides(
        format, map, labels, split, seed, group_by, near_threshold, no_near, strip_html, redact_pii, augment, synonyms
    ) + list(set_)
    if test:
        overrides.append(f"test_inputs={json.dumps([str(p) for p in test])}")
    overrides += [f"include={json.dumps(include)}"] if include else []
    overrides += [f"text_unit={text_unit}"] if text_unit else []
    overrides += [f"max_reject_share={max_reject_share}"] if max_reject_share is not None else []
    overrides += ["clean.nfkc=true"] if nfkc else []
    overrides += [f"clean.whitespace={whitespace}"] if whitespace else []
    try:
        cfg = load_prepare_config(_source(source, dataset), overrides)
        with console.status("preparing...") as status:
            manifest = run_prepare(
                cfg, out, overwrite=overwrite, progress=lambda stage, n: status.update(f"{stage}: {n:,} records")
            )
    except TuneforgeError as exc:
        _fail(exc)
    counts, steps = manifest["counts"], {s["name"]: s for s in manifest["steps"]}
    console.print(
        f"read {counts['read']:,} = kept {counts['kept']:,} + rejected {counts['rejected']:,} "
        f"+ duplicates {counts['duplicates']:,}"
        f" (exact {steps['dedup']['exact_removed']:,}, near {steps['dedup']['near_removed']:,})"
    )
    console.print(
        "splits: "
        + ", ".join(f"{k} {v:,}" for k, v in steps["split"]["examples"].items())
        + (f"; +{counts['augmented']:,} augmented in train" if counts["augmented"] else "")
    )
    if steps["clean"]["counts"]:
        console.print(
            "clean (texts changed per step; samples in cleaning_diffs.jsonl): "
            + ", ".join(f"{k} {v:,}" for k, v in sorted(steps["clean"]["counts"].items()))
        )
    read = steps["read"]
    for line in read["skipped_files"]:
        console.print(f"[yellow]skipped[/yellow]: {line}", highlight=False)
    for kind, r in read["rejected_first"].items():
        console.print(f"[red]rejected[/red] {kind}: {r['count']:,}, first at {', '.join(r['first'])}", highlight=False)
    for kind, w in read["warnings"].items():
        if kind != "skipped_files":
            console.print(
                f"[yellow]warning[/yellow] {kind}: {w['count']:,}, first at {', '.join(w['first'])}", highlight=False
            )
    _print_unused(read["unused_fields"])
    console.print(f"wrote {out}/ (manifest.json output_hash {manifest['output_hash'][:12]})")


def _prepare_overrides(
    format, map, labels, split, seed, group_by, near_threshold, no_near, strip_html, redact_pii, augment, synonyms
) -> list[str]:
    """Flags -> `key=value` overrides of the prepare config (values as YAML)."""
    o = []
    if format:
        o.append(f"format={format}")
    if map:
        o += [f"mapping.{k}={json.dumps(v)}" for k, v in (p.split("=", 1) for p in map.split(",") if "=" in p)]
    if labels:
        o.append(f"labels={json.dumps(_labels(labels))}")
    if split:
        parts = split.split(",")
        o += [f"split.{name}={value}" for name, value in zip(("train", "validation", "test"), parts)]
    if seed is not None:
        o.append(f"split.seed={seed}")
    if group_by:
        o.append(f"split.group_by={json.dumps(group_by)}")
    if near_threshold is not None:
        o.append(f"dedup.threshold={near_threshold}")
    if no_near:
        o.append("dedup.near=false")
    if strip_html:
        o.append("clean.strip_html=true")
    if redact_pii:
        o.append(f"clean.redact_pii={json.dumps(_labels(redact_pii))}")
    if augment:
        o += ["augment.enabled=true", f"augment.copies={augment}"]
    if synonyms:
        o.append(f"augment.synonyms={json.dumps(str(synonyms))}")
    return o


@app.command()
def report(
    path: Path = typer.Argument(
        ..., help="A data file, a folder, or a prepared dataset folder (reports its train split)."
    ),
    model: str = typer.Option(
        "demo",
        "--model",
        "-m",
        help="Model (name, hub id, or HF folder) whose tokenizer and chat template count tokens.",
    ),
    format: str = typer.Option("auto", "--format", "-f", help="Record format, or auto."),
    map: str | None = typer.Option(None, "--map", help="Read other column names: ours=theirs,..."),
    epochs: str = typer.Option(
        "3", "--epochs", help="Planned passes over the data (for tokens, cost and time); auto: the epochs rule."
    ),
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Context limit (default: the tokenizer's)."),
    max_length: int | None = typer.Option(
        None, "--max-length", help="The run's model.max_length: tokens over it are counted and not costed."
    ),
    overlength: str = typer.Option("truncate", "--overlength", help="truncate, drop or error, as data.overlength."),
    config: Path | None = typer.Option(None, "--config", "-c", help=_CONFIG_HELP),
    dataset: list[str] = typer.Option([], "--dataset", help=_DATASET_HELP),
    prices: Path | None = typer.Option(
        None, "--prices", help="YAML price table: training_per_1k, input_per_1k, output_per_1k, currency."
    ),
    sample: int = typer.Option(
        5000, "--sample", help="Tokenize at most this many examples (seeded sample); totals are then estimates."
    ),
    include: list[str] = typer.Option([], "--include", help=_INCLUDE_HELP),
    text_unit: str = typer.Option("paragraph", "--text-unit", help=_TEXT_UNIT_HELP),
    no_hardware: bool = typer.Option(False, "--no-hardware", help="Skip the matmul benchmark (no time estimate)."),
    output: str = typer.Option("text", "--output", "-o", help="text or json."),
    html_path: Path | None = typer.Option(None, "--html", help="Also write an HTML page with plots here."),
) -> None:
    """Statistics, tokens, and a cost and compute estimate for training on the data."""
    from tuneforge.data.costs import load_prices
    from tuneforge.data.report import build_report
    from tuneforge.data.report_html import render_html

    try:
        cfg = _run_config(config)
        if cfg is not None:
            model, max_length, overlength = cfg.model.name, max_length or cfg.model.max_length, cfg.data.overlength
            map, format = map or (cfg.data.mapping or None), cfg.data.format if format == "auto" else format
            epochs = str(cfg.train.epochs)
        result = build_report(
            _source(path, dataset),
            model=model,
            format=format,
            mapping=map,
            epochs=_epochs(epochs),
            max_tokens=max_length or max_tokens,
            overlength=overlength if max_length else None,
            prices=load_prices(prices),
            sample=sample,
            measure_hardware=not no_hardware,
            include=include,
            text_unit=text_unit,
        )
    except TuneforgeError as exc:
        _fail(exc)
    if html_path is not None:
        html_path.write_text(render_html(result), encoding="utf-8")
    if output == "json":
        typer.echo(json.dumps(result, ensure_ascii=False, indent=2))
        return
    _print_report(result)
    if html_path is not None:
        console.print(f"HTML report: {html_path}")


def _epochs(value: str) -> float | str:
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise DataError(
            f"--epochs {value!r} is not a number", [Problem("--epochs", "not a number", "give e.g. 3, or auto")]
        ) from None


def _print_report(r: dict) -> None:
    table = Table(
        title=f"{r['path']}: {r['examples']:,} examples ({r['invalid']:,} invalid records skipped)", show_header=False
    )
    table.add_column("statistic")
    table.add_column("value")
    rows = [
        ("kinds", r["kinds"]),
        ("splits", r["splits"] or "-"),
        ("messages / example", r["messages_per_example"]),
        ("characters / example", r["chars_per_example"]),
        ("duplicates", r["duplicates"]),
        ("length outliers", f"{r['length_outliers']['count']} (lines {r['length_outliers']['lines'][:5]})"),
        ("labels", r["labels"] or "-"),
        ("scripts", r["charset"]["scripts"]),
        ("charset anomalies", r["charset"]["anomalies"] or "none"),
    ]
    tokens = r.get("tokens")
    if tokens:
        est = " (estimated from a sample)" if tokens["estimated"] else ""
        rows += [
            ("tokens / example", tokens["per_example"]),
            ("total tokens" + est, f"{tokens['total_tokens']:,} ({tokens['loss_tokens']:,} carry loss)"),
            ("over context limit", f"{tokens['over_context']:,} examples > {tokens['context_limit']} tokens"),
            ("assistant tokens / example", tokens["loss_tokens_per_example"]),
        ]
        if tokens.get("over_max_length"):
            o = tokens["over_max_length"]
            rows.append(
                (
                    "over model.max_length",
                    f"{o['count']:,} ({o['share']:.1%}) > {o['limit']} tokens, "
                    f"first at {', '.join(o['first']) or '-'}; data.overlength: {o['policy']}; "
                    f"cost counts {tokens['trained_tokens']:,} tokens",
                )
            )
    rows.append(("without a user or system message", f"{r.get('no_user_or_system', 0):,} examples"))
    if "epochs_rule" in r:
        e = r["epochs_rule"]
        rows.append(("epochs", f"{e['epochs']:g} ({e['source']}); auto would be {e['auto']} ({e['rule']})"))
    cost = r.get("cost")
    if cost:
        rows += [
            ("training tokens x epochs", f"{cost['training_tokens']:,} ({cost['epochs']:g} epochs)"),
            ("training cost", f"{cost['training_cost']:,.2f} {cost['currency']}"),
            ("serving cost / 1K requests", f"{cost['serving_cost_per_1k_requests']:,.2f} {cost['currency']}"),
        ]
        if "flops" in cost:
            rows.append(("compute", f"{cost['flops']:.3g} FLOPs ({cost['params']:,} params)"))
        if "seconds_typical" in cost:
            rows.append(
                (
                    "time on this machine",
                    f"{cost['seconds_typical']:,.0f} s at {cost['typical_utilisation']:.0%} of the measured "
                    f"{cost['peak_flops_per_s'] / 1e9:,.1f} GFLOP/s peak (>= {cost['seconds_at_peak']:,.0f} s)",
                )
            )
    for name, value in rows:
        table.add_row(name, value if isinstance(value, str) else json.dumps(value))
    console.print(table)
    _print_unused(r.get("unused_fields", {}))
