"""`tuneforge tune`: hyperparameter search over a run config (Optuna, TPE, pruning on validation loss)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

err = Console(stderr=True)


def tune_command(
    config: Path = typer.Argument(..., help="YAML run config; its output_dir is the study folder."),
    overrides: list[str] | None = typer.Argument(None, help="Fixed key=value overrides, as for `tuneforge train`."),
    space: list[str] = typer.Option(
        ...,
        "--space",
        help="KEY=DIST(ARGS), repeatable: loguniform(low,high), "
        "uniform(low,high), int(low,high[,step]) or choice(a,b,...).",
    ),
    trials: int | None = typer.Option(
        None,
        min=1,
        help="Trials this process runs (each process sharing a study "
        "adds its own). With neither --trials nor --timeout: 10.",
    ),
    storage: str | None = typer.Option(
        None,
        help="Optuna storage URL; default sqlite:///<output_dir>/study.db. "
        "Share a study: postgresql+psycopg://user:pass@host:5432/db.",
    ),
    study: str | None = typer.Option(None, help="Study name; default: the output_dir folder's name."),
    timeout: float | None = typer.Option(None, min=1, help="Start no trial after this many seconds."),
    pruner: str = typer.Option("median", help="median, hyperband or none (prunes on the validation losses)."),
    direction: str = typer.Option("minimize", help="minimize or maximize --metric."),
    metric: str = typer.Option("val_loss", help="The run's final metric to optimise (val_loss, accuracy, ...)."),
    quiet: bool = typer.Option(False, help="No training progress bars."),
) -> None:
    """Search hyperparameters: each trial is a run <output_dir>/trial-NNNN; writes best.yaml and report.html."""
    from tuneforge.errors import ConfigError, Problem
    from tuneforge.tune import plan_search, run_search, trials_table, write_best_config, write_report
    from tuneforge.tune.search import hide_password, storage_url

    problems = [
        Problem(f"--{name} {value}", "not one of " + ", ".join(allowed))
        for name, value, allowed in (
            ("pruner", pruner, ("median", "hyperband", "none")),
            ("direction", direction, ("minimize", "maximize")),
        )
        if value not in allowed
    ]
    if problems:
        raise ConfigError("invalid tune options", problems)
    plan = plan_search(
        config, space, overrides or [], storage=storage, study=study, metric=metric, direction=direction, pruner=pruner
    )  # type: ignore[arg-type]
    err.print(f"study '{plan.study_name}' in {hide_password(storage_url(plan.storage))}; trials in {plan.folder}")
    study_ = run_search(plan, trials if trials or timeout else 10, timeout, progress=not quiet, on_trial=_say)
    Console().print(trials_table(study_, metric))
    report = write_report(study_, plan)
    best = write_best_config(study_, plan)
    err.print(f"best config: {best}   report: {report}")
    err.print(f"train it: tuneforge train {best}")
    print(
        json.dumps(
            {
                "study": plan.study_name,
                "best_value": study_.best_value,
                "best_params": study_.best_params,
                "best_config": str(best),
                "report": str(report),
            }
        )
    )


def _say(trial) -> None:
    note = trial.user_attrs.get("error") or (
        f"at step {trial.user_attrs['pruned_at_step']}" if "pruned_at_step" in trial.user_attrs else ""
    )
    value = f" {trial.value:.4f}" if trial.value is not None else ""
    err.print(f"trial {trial.number} {trial.state.name.lower()}{value} {trial.params} {note}".rstrip(), highlight=False)


def register(app: typer.Typer) -> None:
    app.command(name="tune")(tune_command)
