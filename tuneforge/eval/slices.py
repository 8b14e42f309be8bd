"""Per-slice results: the primary metric for each value of a metadata field.

An average gain can hide a group that got worse (bias amplification). For every field we
report each approach's metric per value with its interval, and flag (a) the worst slice of
an approach when its whole interval lies below the approach's overall mean by a material
gap, and (b) slices
where fine-tuning helped less than half its average gain, or hurt (paired interval of the
per-example difference against the base model).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from tuneforge.eval.compare import ApproachResult, metric_difference, metric_interval
from tuneforge.eval.metrics import Metric

MAX_VALUES = 20
MIN_PER_VALUE = 3
MIN_GAP = 0.05  # of the metric's scale: smaller gaps are not worth a warning even when the interval excludes them


def slice_fields(metadata: list[dict[str, Any]], requested: list[str] | None = None) -> list[str]:
    """The requested fields, or every field with 2-20 scalar values seen at least 3 times each."""
    if requested:
        return requested
    values: dict[str, list] = defaultdict(list)
    for row in metadata:
        for k, v in row.items():
            if isinstance(v, (str, int, bool)):
                values[k].append(v)
    fields = []
    for k, vs in values.items():
        counts = {v: vs.count(v) for v in set(vs)}
        if len(vs) == len(metadata) and 2 <= len(counts) <= MAX_VALUES and min(counts.values()) >= MIN_PER_VALUE:
            fields.append(k)
    return sorted(fields)


def groups(metadata: list[dict[str, Any]], field: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = defaultdict(list)
    for i, row in enumerate(metadata):
        if field in row:
            out[str(row[field])].append(i)
    return dict(sorted(out.items()))


def slice_report(
    results: list[ApproachResult],
    metric: Metric,
    fields: list[str],
    samples: int,
    confidence: float,
    reference: str = "base",
    tuned: tuple[str, ...] = ("fine_tuned",),
) -> dict[str, Any]:
    if not results:
        return {"metric": metric.name, "fields": {}}
    metadata = results[0].metadata
    overall = {r.name: metric_interval(r, metric, samples, confidence).mean for r in results}
    by_name = {r.name: r for r in results}
    out: dict[str, Any] = {}
    for field in fields:
        idx_by_value = groups(metadata, field)
        values = {}
        for value, idx in idx_by_value.items():
            values[value] = {
                "n": len(idx),
                **{r.name: metric_interval(r, metric, samples, confidence, subset=idx).to_dict() for r in results},
            }
        flags = _worst_slices(values, overall, field, MIN_GAP * metric.scale)
        if reference in by_name:
            for name in tuned:
                if name in by_name:
                    flags += _tuning_gaps(
                        by_name[name], by_name[reference], metric, idx_by_value, field, samples, confidence
                    )
        out[field] = {"values": values, "flags": flags}
    return {"metric": metric.name, "overall": {k: round(v, 4) for k, v in overall.items()}, "fields": out}


def _worst_slices(values: dict[str, dict], overall: dict[str, float], field: str, min_gap: float) -> list[str]:
    flags = []
    for name, mean in overall.items():
        value, cell = min(((v, c[name]) for v, c in values.items()), key=lambda vc: vc[1]["mean"])
        if cell["ci_high"] < mean and mean - cell["mean"] >= min_gap:
            flags.append(
                f"{name}: {field}={value} scores {cell['mean']:.3f} [{cell['ci_low']:.3f}, {cell['ci_high']:.3f}], "
                f"below its overall {mean:.3f}"
            )
    return flags


def _tuning_gaps(
    tuned: ApproachResult,
    base: ApproachResult,
    metric: Metric,
    idx_by_value: dict[str, list[int]],
    field: str,
    samples: int,
    confidence: float,
) -> list[str]:
    """Slices where fine-tuning hurt, or gained less than half of its average gain (signs follow higher_is_better)."""
    sign = 1.0 if metric.higher_is_better else -1.0
    average = sign * metric_difference(tuned, base, metric, samples, confidence)[0].mean
    flags = []
    for value, idx in idx_by_value.items():
        d, _ = metric_difference(tuned, base, metric, samples, confidence, subset=idx)
        mean, low, high = sign * d.mean, min(sign * d.ci_low, sign * d.ci_high), max(sign * d.ci_low, sign * d.ci_high)
        if high < 0:
            flags.append(
                f"{tuned.name} is worse than {base.name} on {field}={value}: {mean:+.3f} "
                f"[{low:+.3f}, {high:+.3f}] (fine-tuning hurt this group)"
            )
        elif average > 0 and high < average / 2:
            flags.append(
                f"{tuned.name} gains only {mean:+.3f} [{low:+.3f}, {high:+.3f}] on {field}={value}, "
                f"less than half its average gain {average:+.3f}"
            )
    return flags
