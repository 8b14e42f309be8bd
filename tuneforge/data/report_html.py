"""A self-contained HTML page for a data report: tables plus matplotlib plots as base64 PNG."""

from __future__ import annotations

import base64
import html
import io
import json
from typing import Any


def _png(draw) -> str:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    draw(ax)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return f'<img alt="plot" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'


def _bars(labels: list[str], values: list[float], title: str, xlabel: str):
    def draw(ax):
        ax.bar(range(len(values)), values, color="#4c72b0")
        ax.set_xticks(
            range(len(values)),
            labels,
            rotation=45 if len(labels) > 8 else 0,
            ha="right" if len(labels) > 8 else "center",
            fontsize=8,
        )
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("examples")

    return draw


def _token_histogram(tokens: dict[str, Any]):
    def draw(ax):
        edges, counts = tokens["histogram"]["edges"], tokens["histogram"]["counts"]
        ax.stairs(counts, edges, fill=True, color="#4c72b0")
        limit = tokens["context_limit"]
        if edges and limit <= 1.5 * edges[-1]:  # a far-away limit would squash the histogram
            ax.axvline(limit, color="#c44e52", linestyle="--", label=f"context limit {limit}")
            ax.legend(fontsize=8)
        ax.set_title(f"tokens per example (context limit {limit})" + (", sample" if tokens["estimated"] else ""))
        ax.set_xlabel("tokens")
        ax.set_ylabel("examples")

    return draw


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def render_html(report: dict[str, Any]) -> str:
    parts = [
        f"<h1>Data report: {html.escape(report['path'])}</h1>",
        _table(
            [
                ("examples", report["examples"]),
                ("invalid records", report["invalid"]),
                ("duplicates", report["duplicates"]),
                ("kinds", report["kinds"]),
                ("splits", report["splits"] or "-"),
                ("messages per example", report["messages_per_example"]),
                ("characters per example", report["chars_per_example"]),
                ("length outliers", report["length_outliers"]),
                ("scripts", report["charset"]["scripts"]),
                ("charset anomalies", report["charset"]["anomalies"] or "none"),
            ]
        ),
    ]
    plots = [
        _png(
            _bars(
                list(report["messages_histogram"]),
                list(report["messages_histogram"].values()),
                "messages per example",
                "messages",
            )
        )
    ]
    if report["labels"]:
        top = list(report["labels"].items())[:30]
        plots.append(_png(_bars([k for k, _ in top], [v for _, v in top], "label balance", "label")))
    tokens = report.get("tokens")
    if tokens:
        parts.append("<h2>Tokens</h2>" + _table([(k, v) for k, v in tokens.items() if k != "histogram"]))
        plots.insert(0, _png(_token_histogram(tokens)))
    cost = report.get("cost")
    if cost:
        parts.append(
            "<h2>Cost and compute estimate</h2>"
            + _table([(k, v) for k, v in cost.items() if k != "prices"] + [("prices", cost["prices"])])
        )
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;margin:1em 0}"
        "th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:.9em}"
        "th{background:#f4f4f4}img{margin:.5em}"
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>tuneforge data report</title>"
        f"<style>{style}</style></head>"
        f"<body>{''.join(parts)}<h2>Plots</h2>{''.join(plots)}</body></html>"
    )
