"""The HTML evaluation report: verdict, approach table, plots (base64 PNG), slices,
forgetting, cost and sample predictions, in one self-contained file."""

from __future__ import annotations

import base64
import html
import io
from typing import Any

from tuneforge.eval.compare import ApproachResult

SECTIONS = (
    "Verdict",
    "Approaches",
    "Graders",
    "Slices",
    "Generalisation and forgetting",
    "Cost and break-even",
    "Sample predictions",
)
_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td:first-child{text-align:left}.flag{color:#a40000}img{max-width:100%}"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _figure(width: float = 7, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def metric_bars(report: dict[str, Any], metric: str | None = None) -> str:
    names = [a["name"] for a in report["approaches"]]
    metric = metric or report["primary_metric"]
    cells = [a["metrics"][metric] for a in report["approaches"]]
    fig, ax = _figure()
    means = [c["mean"] for c in cells]
    err = [[m - c["ci_low"] for m, c in zip(means, cells)], [c["ci_high"] - m for m, c in zip(means, cells)]]
    ax.bar(names, means, yerr=err, capsize=5, color="#4a7ebb")
    ax.set_ylabel(f"{metric} ({100 * report['confidence']:.0f}% CI)")
    ax.set_title(f"{metric} by approach")
    return _png(fig)


def loss_plot(curves: dict[str, Any]) -> str:
    if not curves.get("train"):
        return "<p>No training curves (baselines only, or the run logged none).</p>"
    fig, ax = _figure()
    ax.plot(*zip(*curves["train"]), label="train loss")
    if curves.get("validation"):
        ax.plot(*zip(*curves["validation"]), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.legend()
    return _png(fig)


def slice_plot(slices: dict[str, Any], field: str) -> str:
    values = slices["fields"][field]["values"]
    approaches = [k for k in next(iter(values.values())) if k != "n"]
    fig, ax = _figure(8, 3.2)
    width = 0.8 / max(len(approaches), 1)
    for j, name in enumerate(approaches):
        xs = [i + j * width for i in range(len(values))]
        cells = [values[v][name] for v in values]
        err = [[c["mean"] - c["ci_low"] for c in cells], [c["ci_high"] - c["mean"] for c in cells]]
        ax.bar(xs, [c["mean"] for c in cells], width, yerr=err, capsize=2, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(values))], list(values), rotation=20)
    ax.set_ylabel(slices["metric"])
    ax.set_title(f"{slices['metric']} by {field}")
    ax.legend(fontsize=7)
    return _png(fig)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "mean" in value:
        return f"{value['mean']:.4g} [{value['ci_low']:.4g}, {value['ci_high']:.4g}]"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def _flags(flags: list[str]) -> str:
    return "".join(f'<p class="flag">⚠ {html.escape(f)}</p>' for f in flags)


def render_html(report: dict[str, Any], results: list[ApproachResult], samples: int = 8) -> str:
    metric_names = list(report["approaches"][0]["metrics"]) if report["approaches"] else []
    parts = [
        f"<h1>tuneforge evaluation</h1><p>run: {html.escape(str(report['run_dir']))} · "
        f"base: {html.escape(report['base_model'])} · "
        f"{report['test_examples']} test examples from {html.escape(report['test_file'])}</p>"
    ]
    parts.append("<h2>Verdict</h2>" + "".join(f"<p>{html.escape(line)}</p>" for line in report["verdict"]["summary"]))
    parts.append(
        "<h2>Approaches</h2>"
        + _table(
            ["approach", *metric_names, "prompt tokens/request", "latency s"],
            [
                [
                    a["name"],
                    *(a["metrics"][m] for m in metric_names),
                    a["prompt_tokens_per_request"],
                    a["latency_seconds"],
                ]
                for a in report["approaches"]
            ],
        )
    )
    parts.append(metric_bars(report))
    parts.append("<h2>Graders</h2>" + _graders(report))
    parts.append("<h2>Slices</h2>")
    slices = report["slices"]
    for field, info in slices["fields"].items():
        names = [k for k in next(iter(info["values"].values())) if k != "n"]
        parts.append(
            f"<h3>{html.escape(field)}</h3>"
            + slice_plot(slices, field)
            + _flags(info["flags"])
            + _table([field, "n", *names], [[v, c["n"], *(c[n] for n in names)] for v, c in info["values"].items()])
        )
    if not slices["fields"]:
        parts.append("<p>No metadata field to slice by.</p>")
    parts.append("<h2>Generalisation and forgetting</h2>" + _forgetting(report))
    parts.append("<h2>Cost and break-even</h2>" + _cost(report["cost"]))
    parts.append("<h2>Sample predictions</h2>" + _samples(results, samples))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>tuneforge eval</title>"
        f"<style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )


def _graders(report: dict[str, Any]) -> str:
    """Each grader's family and, per approach, the answers it could not grade (scored 0) with the first reasons."""
    graders = report.get("graders") or {}
    if not graders:
        return "<p>No graders configured (eval.graders): only the task metrics above.</p>"
    families = report.get("metric_families", {})
    out = "<p>" + html.escape("; ".join(f"{f}: ranked by {m}" for f, m in families.items())) + "</p>"
    names = [a["name"] for a in report["approaches"]]
    out += _table(
        ["grader", "type", "family", *(f"{n} errors" for n in names)],
        [[g, info["type"], info["family"], *(info["errors"].get(n, 0) for n in names)] for g, info in graders.items()],
    )
    out += _flags(
        [f"{g} on {n}: {e}" for g, info in graders.items() for n, errs in info["first_errors"].items() for e in errs]
    )
    facts = families.get("facts")
    return out + (metric_bars(report, facts) if facts else "")


def _forgetting(report: dict[str, Any]) -> str:
    f, curves = report["forgetting"], report["training_curves"]
    out = ""
    if "perplexity" in f:
        out += (
            f"<p>Perplexity on general held-out text ({html.escape(f['source'])}); "
            "a rise after fine-tuning means forgetting.</p>"
        )
        out += _table(
            ["model", "perplexity", "change vs base %"],
            [[n, p, f["change_percent_vs_base"].get(n)] for n, p in f["perplexity"].items()],
        )
    else:
        out += f"<p>{html.escape(f.get('skipped', ''))}</p>"
    out += loss_plot(curves)
    over = curves.get("overfitting")
    if over and over.get("overfitting") is not None:
        out += (
            _flags([over["reason"]])
            if over["overfitting"]
            else f"<p>No overfitting: {html.escape(over['reason'])}.</p>"
        )
        out += _table(
            ["step", "train loss", "validation loss", "gap"],
            [[g["step"], g["train_loss"], g["val_loss"], g["gap"]] for g in over["gap"]],
        )
    return out


def _cost(cost: dict[str, Any]) -> str:
    cur = cost["prices"]["currency"]
    out = _table(
        [
            "approach",
            "prompt tokens",
            "completion tokens",
            f"{cur} per 1K requests",
            "latency s (1 request)",
            "s/request batched",
        ],
        [
            [
                n,
                r["prompt_tokens_per_request"],
                r["completion_tokens_per_request"],
                r["cost_per_1k_requests"],
                r["latency_seconds"],
                r["seconds_per_request_batched"],
            ]
            for n, r in cost["approaches"].items()
        ],
    )
    for tuned, others in cost["break_even_requests"].items():
        t = cost["training"][tuned]
        out += (
            f"<p>{html.escape(tuned)}: training {t['training_tokens']:,} tokens x {t['epochs']} epochs = "
            f"{cur} {t['training_cost']:.4f}.</p>"
        )
        out += _table(
            [f"{tuned} vs", "break-even requests"], [[n, v if v is not None else "never"] for n, v in others.items()]
        )
    return out


def _samples(results: list[ApproachResult], n: int) -> str:
    if not results:
        return ""
    rows = []
    for i in range(min(n, len(results[0].predictions))):
        prompt = results[0].prompts[i][-1]["content"] if results[0].prompts else ""
        rows.append([prompt, results[0].references[i], *(r.predictions[i] for r in results)])
    return _table(["question", "reference", *(r.name for r in results)], rows)
