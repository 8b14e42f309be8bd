"""A plain-language verdict: which approach wins on quality (per metric family: facts, style), which on
cost, and how sure we are.

Quality differences are paired bootstrap intervals of the primary metric (same resampled
test questions for both approaches; corpus metrics are recomputed on each resample); a
difference whose interval contains 0 is reported as a tie, not a win. Fine-tuning is
"worth it" only when the best fine-tuned approach
beats the best cheaper alternative with an interval above 0.
"""

from __future__ import annotations

from typing import Any

from tuneforge.eval.bootstrap import Interval
from tuneforge.eval.compare import ApproachResult, metric_difference
from tuneforge.eval.cost import BASELINES
from tuneforge.eval.graders import GraderMetric
from tuneforge.eval.metrics import Metric


def _diff(a: ApproachResult, b: ApproachResult, metric: Metric, samples: int, confidence: float) -> dict[str, float]:
    """a - b, signed so that a positive difference means a is better (also for lower-is-better metrics)."""
    d, p_better = metric_difference(a, b, metric, samples, confidence)
    if not metric.higher_is_better:
        d, p_better = Interval(-d.mean, -d.ci_high, -d.ci_low), 1 - p_better
    return {**d.to_dict(), "p_better": round(p_better, 3)}


def _fmt(d: dict[str, float]) -> str:
    return f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"


# task metrics that reward reading like the reference (the house template scores well on them)
STYLE_METRICS = ("token_f1", "exact_match", "rouge_l", "bleu", "chrf")


def metric_families(primary: Metric, metrics: list[Metric | GraderMetric]) -> dict[str, Metric | GraderMetric]:
    """The metric each family is ranked by: the first grader of the family (facts, or style), and for style
    the primary metric when it is a style metric, else the first one."""
    out: dict[str, Metric | GraderMetric] = {}
    for m in sorted(metrics, key=lambda m: (m.kind != "graded", m is not primary)):
        family = m.family if isinstance(m, GraderMetric) else ("style" if m.name in STYLE_METRICS else None)
        if family:
            out.setdefault(family, m)
    return out


def verdict(
    results: list[ApproachResult],
    summaries: list[dict[str, Any]],
    metric: Metric,
    cost: dict[str, Any],
    forgetting: dict[str, Any] | None,
    overfit: dict[str, Any] | None,
    slice_flags: list[str],
    samples: int = 1000,
    confidence: float = 0.95,
    answer_shown: dict[str, float] | None = None,
    families: dict[str, Metric | GraderMetric] | None = None,
) -> dict[str, Any]:
    """`metric` is the primary metric (slices, retrieval); with `families` ({"facts": fact_accuracy, "style":
    token_f1}) each family names its own winner, and whether fine-tuning pays on it, instead of one headline."""
    by_name = {r.name: r for r in results}
    level = f"{100 * confidence:.0f}%"
    n = len(results[0].predictions)
    lines: list[str] = []
    means = _means(summaries, metric)
    best, tied, differences = _rank(by_name, means, metric, samples, confidence)
    worth, tuned_line = _fine_tuning_worth(by_name, means, metric, samples, confidence, level, differences)
    ranked_families: dict[str, dict[str, Any]] = {}
    if families and (len(families) > 1 or metric not in families.values()):
        for family, m in families.items():
            f_means = _means(summaries, m)
            f_best, f_tied, f_diffs = _rank(by_name, f_means, m, samples, confidence)
            f_worth, f_line = _fine_tuning_worth(by_name, f_means, m, samples, confidence, level, f_diffs, family)
            ranked_families[family] = {
                "metric": m.name,
                "winner": f_best,
                "tied_with": f_tied,
                "fine_tuning_worth_it": f_worth,
                "differences": f_diffs,
            }
            lines.append(_quality_line(family.capitalize(), m, n, f_best, f_means[f_best], f_tied, level))
            lines += [f_line] if f_line else []
    else:
        lines.append(_quality_line("Quality", metric, n, best, means[best], tied, level))
        lines += [tuned_line] if tuned_line else []
    cost_rows = cost["approaches"]
    cheapest = min(cost_rows, key=lambda n: cost_rows[n]["cost_per_request"])
    cur = cost["prices"]["currency"]
    # the approaches whose quality cannot be told apart from the best: on facts when they are graded
    lead = ranked_families.get("facts") or {"winner": best, "tied_with": tied}
    best_group = [lead["winner"]] + lead["tied_with"]
    cheapest_good = min(best_group, key=lambda n: cost_rows[n]["cost_per_request"])
    lines.append(
        f"Cost: {cheapest} is cheapest per request "
        f"({cost_rows[cheapest]['prompt_tokens_per_request']:.0f} prompt tokens, "
        f"{cur} {cost_rows[cheapest]['cost_per_1k_requests']:.4f} per 1K requests)"
        + (
            f"; among the best-quality approaches, {cheapest_good} is cheapest "
            f"({cur} {cost_rows[cheapest_good]['cost_per_1k_requests']:.4f} per 1K)."
            if cheapest_good != cheapest
            else ", and it is also among the best on quality."
        )
    )
    lines += [
        _retrieval_line(name, shown, means[name], means[best], metric) for name, shown in (answer_shown or {}).items()
    ]
    lines += _break_even_lines(cost)
    lines += _health_lines(forgetting, overfit, slice_flags)
    return {
        "metric": metric.name,
        "confidence": confidence,
        "quality_winner": best,
        "tied_with": tied,
        "cost_winner": cheapest,
        "cheapest_best_quality": cheapest_good,
        "fine_tuning_worth_it": worth,
        "differences": differences,
        "families": ranked_families,
        "summary": lines,
    }


def _means(summaries: list[dict[str, Any]], metric) -> dict[str, float]:
    return {s["name"]: s["metrics"][metric.name]["mean"] for s in summaries}


def _rank(by_name, means, metric, samples, confidence) -> tuple[str, list[str], dict[str, dict[str, float]]]:
    """The best approach, those statistically tied with it, and its paired difference with each other one."""
    ranked = sorted(means, key=means.get, reverse=metric.higher_is_better)
    tied, differences = [], {}
    for other in ranked[1:]:
        d = differences[f"{ranked[0]} - {other}"] = _diff(
            by_name[ranked[0]], by_name[other], metric, samples, confidence
        )
        if d["ci_low"] <= 0:
            tied.append(other)
    return ranked[0], tied, differences


def _quality_line(title: str, metric, n: int, best: str, score: float, tied: list[str], level: str) -> str:
    return f"{title} ({metric.name}, {n} test examples): {best} scores best at {score:.3f}" + (
        f"; statistically tied with {', '.join(tied)} (the {level} interval of the difference includes 0)."
        if tied
        else "; its lead over every other approach is larger than the noise."
    )


def _fine_tuning_worth(
    by_name, means, metric, samples, confidence, level, differences, family: str = "quality"
) -> tuple[str, str | None]:
    tuned = [n for n in means if n not in BASELINES]
    cheaper = [n for n in means if n in BASELINES]
    if not tuned or not cheaper:
        return "unknown", None
    best_tuned = max(tuned, key=means.get) if metric.higher_is_better else min(tuned, key=means.get)
    best_cheap = max(cheaper, key=means.get) if metric.higher_is_better else min(cheaper, key=means.get)
    d = differences[f"{best_tuned} - {best_cheap}"] = _diff(
        by_name[best_tuned], by_name[best_cheap], metric, samples, confidence
    )
    if d["ci_low"] > 0:
        return "yes", (
            f"Fine-tuning pays on {family}: {best_tuned} beats the best cheaper alternative ({best_cheap}) "
            f"by {_fmt(d)} "
            f"({level} interval above 0)."
        )
    if d["ci_high"] < 0:
        reverse = {"mean": -d["mean"], "ci_low": -d["ci_high"], "ci_high": -d["ci_low"]}
        return "no", f"Fine-tuning does not pay on {family}: {best_cheap} beats {best_tuned} by {_fmt(reverse)}."
    return "uncertain", (
        f"Fine-tuning is not distinguishable from {best_cheap} on {family}: "
        f"{best_tuned} - {best_cheap} = {_fmt(d)} "
        f"({level} interval includes 0; more test data would narrow it)."
    )


def _retrieval_line(name: str, shown: float, score: float, best: float, metric: Metric) -> str:
    """Whether a RAG approach is limited by what was retrieved or by how the model reads it."""
    found = (
        f"{name}: the prompt held the reference answer for {100 * shown:.0f}% of questions "
        f"and {name} scores {score:.3f} {metric.name}"
    )
    if shown < 0.5:
        return found + "; retrieval is the limit (better passages or more of them would help)."
    if metric.higher_is_better and score < 0.5 * best:
        return (
            found + "; the model does not use what it is shown "
            "(an instruction-tuned base, or fine-tuning with passages, would)."
        )
    return found + "."


def _break_even_lines(cost: dict[str, Any]) -> list[str]:
    lines = []
    for tuned, others in cost["break_even_requests"].items():
        t = cost["training"][tuned]
        cheaper_after = [f"{n} after {v:,} requests" for n, v in others.items() if v is not None]
        never = [n for n, v in others.items() if v is None]
        trained = (
            f"{tuned} costs {t['currency']} {t['training_cost']:.4f} to train "
            f"({t['training_tokens']:,} tokens x {t['epochs']:.2f} epochs)"
        )
        if not cheaper_after:
            lines.append(
                f"{trained} and is never cheaper overall than {', '.join(never)}: "
                "their requests cost no more than its own."
            )
            continue
        lines.append(
            f"{trained} and becomes cheaper overall than {', '.join(cheaper_after)}"
            + (f"; never cheaper than {', '.join(never)}, whose requests cost no more." if never else ".")
        )
    return lines


def _health_lines(forgetting, overfit, slice_flags) -> list[str]:
    lines = []
    if forgetting:
        for name, pct in forgetting["change_percent_vs_base"].items():
            lines.append(
                f"General-text perplexity of {name} changed by {pct:+.1f}% against the base"
                + (" - forgetting." if forgetting["forgetting"][name] else " (no material forgetting).")
            )
    if overfit and overfit.get("overfitting") is not None:
        lines.append(("Overfitting: " if overfit["overfitting"] else "No overfitting: ") + overfit["reason"] + ".")
    if slice_flags:
        lines.append(f"{len(slice_flags)} slice warning(s); first: {slice_flags[0]}.")
    return lines
