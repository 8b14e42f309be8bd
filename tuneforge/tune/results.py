"""What a search leaves: the trials table, `best.yaml` (a config `tuneforge train` takes), the HTML/PNG report."""

from __future__ import annotations

import html
import warnings
from pathlib import Path
from typing import Any

import optuna
from rich.table import Table

from tuneforge.errors import Problem, TuneforgeError
from tuneforge.tune.search import SearchPlan

_STATE = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One dict per trial of the study (every process's), in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = _STATE.get(t.state.name, t.state.name.lower())
        note = t.user_attrs.get("error", "")
        if t.state.name == "PRUNED":
            note = f"pruned at step {t.user_attrs.get('pruned_at_step', t.last_step)}"
        elif t.state.name == "FAIL" and not note:
            note = "its process stopped reporting (killed or lost)"
        duration = t.duration.total_seconds() if t.duration else None
        rows.append(
            {
                "number": t.number,
                "state": state,
                "value": t.value,
                "params": dict(t.params),
                "seconds": duration,
                "note": note,
                "run_dir": t.user_attrs.get("run_dir"),
            }
        )
    return rows


def trials_table(study: optuna.Study, metric: str) -> Table:
    rows = trial_rows(study)
    keys = sorted({k for r in rows for k in r["params"]})
    best = _best_number(study)
    table = Table(title=f"study '{study.study_name}': {len(rows)} trial(s), {study.direction.name.lower()} {metric}")
    for name in ("trial", "state", metric, *keys, "s", "note"):
        table.add_column(name, justify="right" if name not in ("state", "note") else "left")
    for r in rows:
        mark = " *" if r["number"] == best else ""
        table.add_row(
            f"{r['number']}{mark}",
            r["state"],
            _fmt(r["value"]),
            *(_fmt(r["params"].get(k)) for k in keys),
            _fmt(r["seconds"], 1),
            r["note"],
        )
    return table


def _best_number(study: optuna.Study) -> int | None:
    try:
        return study.best_trial.number
    except ValueError:  # no completed trial yet
        return None


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"
    return str(value)


def write_best_config(study: optuna.Study, plan: SearchPlan) -> Path:
    """`<study folder>/best.yaml`: the base config with the best trial's overrides, training into `<study>/best`."""
    number = _best_number(study)
    if number is None:
        raise TuneforgeError(
            f"study '{study.study_name}' has no completed trial, so no best config",
            [
                Problem(
                    "--trials",
                    "every trial failed or was pruned",
                    "see each trial's error in the table; fix the config or widen the space",
                )
            ],
        )
    best = study.best_trial
    cfg = plan.config_for(best.user_attrs["overrides"], plan.folder / "best")
    if Path(cfg.model.name).exists():  # a local model folder: absolute, like the data paths, so best.yaml stands alone
        cfg = cfg.model_copy(
            update={"model": cfg.model.model_copy(update={"name": str(Path(cfg.model.name).resolve())})}
        )
    path = plan.folder / "best.yaml"
    header = (
        f"# best of study '{study.study_name}': trial {number}, {plan.metric} = {best.value}\n"
        f"# overrides: {' '.join(best.user_attrs['overrides'])}\n"
    )
    path.write_text(header + cfg.to_yaml())
    return path


# (file stem, title, optuna.visualization.matplotlib function)
PLOTS = (
    ("history", "Optimisation history", "plot_optimization_history"),
    ("importances", "Parameter importances", "plot_param_importances"),
    ("parallel", "Parallel coordinates", "plot_parallel_coordinate"),
)


def write_report(study: optuna.Study, plan: SearchPlan) -> Path:
    """`<study folder>/report.html` with the trials table and the plots, each also a PNG beside it."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as views

    plan.folder.mkdir(parents=True, exist_ok=True)
    figures = []
    for stem, title, fn in PLOTS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib views experimental
                ax = getattr(views, fn)(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(8, 4.5)
            fig.tight_layout()
            fig.savefig(plan.folder / f"{stem}.png", dpi=100)
            plt.close(fig)
            figures.append(f'<h2>{title}</h2><img alt="{title}" src="{stem}.png">')
        except Exception as exc:  # e.g. importances need two completed trials that differ
            plt.close("all")
            figures.append(f"<h2>{title}</h2><p>not drawn: {html.escape(str(exc))}</p>")
    path = plan.folder / "report.html"
    path.write_text(_page(study, plan, figures))
    return path


def _page(study: optuna.Study, plan: SearchPlan, figures: list[str]) -> str:
    rows = trial_rows(study)
    keys = sorted({k for r in rows for k in r["params"]})
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ("trial", "state", plan.metric, *keys, "seconds", "note"))
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(c)}</td>"
            for c in (
                str(r["number"]),
                r["state"],
                _fmt(r["value"]),
                *(_fmt(r["params"].get(k)) for k in keys),
                _fmt(r["seconds"], 1),
                r["note"],
            )
        )
        + "</tr>"
        for r in rows
    )
    number = _best_number(study)
    best = (
        f"<p>best: trial {number}, {plan.metric} = {_fmt(study.best_value)}; config: best.yaml</p>"
        if number is not None
        else "<p>no completed trial yet</p>"
    )
    style = "body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:2px 8px;text-align:right}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(study.study_name)}</title>"
        f"<style>{style}</style></head><body><h1>Search '{html.escape(study.study_name)}'</h1>{best}"
        f"<table><tr>{head}</tr>{body}</table>{''.join(figures)}</body></html>"
    )
