"""`tuneforge eval`: every approach on the same held-out test split, with intervals, slices,
forgetting, cost and a verdict; writes eval.json, predictions and report.html.

Models are loaded one at a time (base, then the fine-tuned run, then each other run) and
every approach that uses a model is scored while it is loaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge.config import EvalSection, RunConfig, apply_overrides, load_config, validate_config
from tuneforge.data.readers import read_examples
from tuneforge.data.types import Conversation, LabelledExample, Message
from tuneforge.errors import ConfigError, DataError, Problem
from tuneforge.eval import cost as costs
from tuneforge.eval.baselines import RAG, FewShot, zero_shot
from tuneforge.eval.compare import (
    ApproachResult,
    answer_in_prompt,
    grade,
    prediction_rows,
    score_approach,
    summarise,
    write_predictions,
)
from tuneforge.eval.encoder_baselines import can_generate, score_classifier, score_embedding_baselines
from tuneforge.eval.forgetting import (
    forgetting_summary,
    general_texts,
    loss_curves,
    overfitting,
    perplexity_interval,
    text_nll,
)
from tuneforge.eval.graders import GraderMetric, build_graders, check_item_fields, item_of, metric_of
from tuneforge.eval.metrics import PRIMARY, Metric, select_metrics
from tuneforge.eval.retrieval import build_retriever, conversation_passage, read_documents
from tuneforge.eval.slices import slice_fields, slice_report
from tuneforge.eval.verdict import metric_families, verdict
from tuneforge.export.model_card import write_model_card
from tuneforge.models.artifact import find_artifact
from tuneforge.models.chat_templates import prompt_like_training
from tuneforge.models.loading import load_for_inference, load_tokenizer

BASELINES = costs.BASELINES
TUNED = ("fine_tuned", "fine_tuned+rag")
APPROACHES = BASELINES + TUNED
# what an encoder cannot do: answer a chat prompt (the classifier head has no prompt to add passages to)
CHAT_ONLY = (*costs.CHAT_BASELINES, "fine_tuned+rag")
ENCODER_DEFAULT = [*costs.ENCODER_BASELINES, "fine_tuned"]


@dataclass
class EvalTarget:
    cfg: RunConfig
    run_dir: Path | None  # the fine-tuned run, None when the config has not been trained yet
    other_runs: list[Path] = field(default_factory=list)


def resolve_target(target: Path, others: list[Path] | None = None, overrides: list[str] | None = None) -> EvalTarget:
    """A run directory (its config.yaml) or a YAML config (its output_dir, if trained)."""
    target = Path(target)
    config = target / "config.yaml" if target.is_dir() else target
    if not config.exists():
        raise ConfigError(
            f"nothing to evaluate at {target}",
            [
                Problem(
                    str(target),
                    "neither a run directory with config.yaml nor a YAML config",
                    "pass a run directory or a run config",
                )
            ],
        )
    cfg = _load_run_config(config, overrides) if target.is_dir() else load_config(config, overrides)
    run_dir = target if target.is_dir() else Path(cfg.output_dir)
    problems = [
        Problem(str(r), "not a run directory (no fine-tuned artifact in it)", "pass finished runs with --run")
        for r in others or []
        if find_artifact(r) is None
    ]
    if cfg.data.test is None:
        problems.append(
            Problem(
                f"{config}: data.test", "no held-out test split", "add data.test: the file every approach is scored on"
            )
        )
    if problems:
        raise ConfigError("cannot evaluate", problems)
    return EvalTarget(cfg, run_dir if find_artifact(run_dir) else None, list(others or []))


def _load_run_config(config: Path, overrides: list[str] | None) -> RunConfig:
    """A run's config.yaml. Its data paths were written as given to `train`: relative ones are
    relative to the folder training ran in, so they are tried against the current folder too."""
    raw = apply_overrides(yaml.safe_load(config.read_text(encoding="utf-8")) or {}, overrides or [])
    data = raw.get("data") if isinstance(raw.get("data"), dict) else {}
    for key in ("train", "validation", "test"):
        value = data.get(key)
        if (
            isinstance(value, str)
            and not Path(value).is_absolute()
            and not Path(value).exists()
            and (config.parent / value).exists()
        ):
            data[key] = str(config.parent / value)
    return validate_config(raw, source=str(config))


def as_conversation(example, where: str) -> Conversation:
    if isinstance(example, Conversation):
        return example
    if isinstance(example, LabelledExample):  # classification as a chat: the text in, the label out
        return Conversation(
            [Message("user", example.text), Message("assistant", example.label)], dict(example.metadata)
        )
    raise DataError(
        "tuneforge eval scores generated answers",
        [
            Problem(
                where,
                f"{type(example).__name__} examples have no answer to generate",
                "use chat, prompt/completion or classification data",
            )
        ],
    )


def load_split(path: Path, fmt: str, limit: int | None = None) -> tuple[list[Conversation], str]:
    """The split as conversations, and the task its format implies (classification for text+label)."""
    examples = read_examples(path, fmt)
    task = "classification" if examples and all(isinstance(ex, LabelledExample) for ex in examples) else "qa"
    convs = [as_conversation(ex, f"{path}: example {i}") for i, ex in enumerate(examples)]
    last = [c.messages[i] for c in convs if (i := c.last_assistant_index()) is not None]
    if any(m.tool_calls for m in last):  # answers that call tools are scored on the calls (tool_call_match)
        task = "tool_calls"
    return (convs[:limit] if limit else convs), task


def run_eval(
    target: EvalTarget,
    out_dir: Path | None = None,
    approaches: list[str] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    started = time.perf_counter()
    cfg, ev = target.cfg, target.cfg.eval
    out_dir = Path(out_dir or target.run_dir or Path(cfg.output_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    encoder = not can_generate(cfg.model.name)
    wanted = _check_approaches(approaches, target, encoder, say)
    if target.run_dir is None:
        say(f"no trained run in {cfg.output_dir}: scoring the baselines only (is fine-tuning needed at all?)")
    test, implied = load_split(cfg.data.test, cfg.data.format, ev.max_examples)
    train, _ = load_split(cfg.data.train, cfg.data.format)
    if not test:
        raise DataError(
            f"no test examples in {cfg.data.test}",
            [Problem("data.test", "the file holds no examples", "point data.test at the held-out split")],
        )
    task = implied if ev.task == "auto" else ev.task
    if implied != "classification" and any(n in costs.ENCODER_BASELINES for n in wanted):
        raise DataError(
            "the embedding baselines classify texts",
            [
                Problem(
                    "eval.approaches",
                    f"{', '.join(n for n in wanted if n in costs.ENCODER_BASELINES)} need text+label data; "
                    f"{cfg.data.test} is not",
                    "use classification data (records with text and label) or drop them",
                )
            ],
        )
    metrics = select_metrics(task, ev.metrics, ev.custom_metric)
    primary = next(m for m in metrics if m.name == (ev.metrics[0] if ev.metrics else PRIMARY[task]))
    # graders are checked against the test examples before any model loads
    check_item_fields(ev.graders, [item_of(c.reference, c.metadata) for c in test], str(cfg.data.test))
    graders = build_graders(ev.graders)
    budget = ev.context_budget or cfg.model.max_length - ev.max_new_tokens
    general = None if encoder else general_texts(cfg)  # an encoder has no next-token perplexity
    classifier = cfg.objective == "classification"  # the fine-tune answers through its head, not by generating
    results: list[ApproachResult] = []
    general_ppl: dict[str, dict[str, float]] = {}
    retriever = None

    def score(name: str, ref: str, model, tok, builder) -> None:
        say(f"  {name}: {len(test)} test examples")
        record(
            score_approach(name, ref, model, tok, test, builder, ev.max_new_tokens, ev.batch_size, ev.latency_samples)
        )

    def score_head(name: str, run: Path) -> None:
        say(f"  {name}: {len(test)} test examples through its classification head")
        model, tok = _load_run(run)
        record(
            score_classifier(
                name,
                str(run),
                model,
                tok,
                labelled(cfg.data.test),
                cfg.model.max_length,
                ev.batch_size,
                ev.latency_samples,
            )
        )

    def labelled(path: Path):
        examples = read_examples(path, cfg.data.format)
        return examples[: ev.max_examples] if path == cfg.data.test and ev.max_examples else examples

    def record(result: ApproachResult) -> None:
        results.append(result)
        grade(results[-1], graders)
        for g, errors in results[-1].grade_errors.items():
            failed = [e for e in errors if e]
            if failed:
                say(
                    f"  {name}: grader {g} could not grade {len(failed)} of {len(errors)} answers (scored 0); "
                    f"first: {failed[0]}"
                )

    def rag_builder(tok):
        nonlocal retriever
        if retriever is None:
            passages = read_documents(ev.rag_docs) if ev.rag_docs else [conversation_passage(c) for c in train]
            retriever = build_retriever(ev.rag_retriever, passages)
        return RAG(retriever, tok, ev.rag_k, budget)

    def forget(name: str, model, tok) -> None:
        if general:
            sums, counts = text_nll(model, tok, general[0], ev.batch_size, cfg.model.max_length)
            general_ppl[name] = perplexity_interval(sums, counts, ev.bootstrap_samples, ev.confidence)

    say(f"base model {cfg.model.name}")
    if general or any(n in costs.CHAT_BASELINES for n in wanted):
        model, tok = load_for_inference(cfg.model.name)
        prompt_like_training(model, tok, cfg.model.chat_template, cfg.data.system_prompt)  # as the fine-tune's
        for name, builder in (
            ("base", lambda: zero_shot),
            ("few_shot", lambda: FewShot(train, tok, ev.few_shot_k, budget, ev.few_shot_selection, cfg.train.seed)),
            ("rag", lambda: rag_builder(tok)),
        ):
            if name in wanted:
                score(name, cfg.model.name, model, tok, builder())
        forget("base", model, tok)
        del model
    encoder_info: dict[str, Any] = {}
    if any(n in costs.ENCODER_BASELINES for n in wanted):
        embedded, encoder_info = score_embedding_baselines(
            wanted,
            cfg.model.name,
            labelled(cfg.data.train),
            labelled(cfg.data.test),
            ev,
            cfg.model.max_length,
            str(cfg.data.train),
            say,
        )
        for result in embedded:
            record(result)
    if target.run_dir is not None and classifier and "fine_tuned" in wanted:
        say(f"fine-tuned run {target.run_dir}")
        score_head("fine_tuned", target.run_dir)
    elif target.run_dir is not None and any(n in wanted for n in TUNED):
        say(f"fine-tuned run {target.run_dir}")
        model, tok = _load_run(target.run_dir)
        if "fine_tuned" in wanted:
            score("fine_tuned", str(target.run_dir), model, tok, zero_shot)
        if "fine_tuned+rag" in wanted:
            score("fine_tuned+rag", str(target.run_dir), model, tok, rag_builder(tok))
        forget("fine_tuned", model, tok)
        del model
    for run in target.other_runs:
        name = _unique(Path(run).name, [r.name for r in results])
        say(f"other run {run} as '{name}'")
        if find_artifact(run).task == "sequence_classification":
            score_head(name, run)
            continue
        model, tok = _load_run(run)
        score(name, str(run), model, tok, zero_shot)
        forget(name, model, tok)
        del model

    report = assemble(
        target,
        results,
        metrics + [metric_of(g) for g in ev.graders],
        primary,
        general_ppl,
        general[1] if general else None,
    )
    if encoder_info:
        report["encoder_baselines"] = encoder_info
    if encoder:
        report["forgetting"] = {"skipped": f"{cfg.model.name} is an encoder: it has no next-token perplexity"}
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_outputs(report, results, out_dir)
    if target.run_dir is not None and out_dir.resolve() == Path(target.run_dir).resolve():
        write_model_card(Path(target.run_dir))  # the card now carries the eval table and warnings
    return report


def assemble(
    target: EvalTarget,
    results: list[ApproachResult],
    metrics: list[Metric | GraderMetric],
    primary: Metric,
    general_ppl: dict[str, dict[str, float]],
    general_source: str | None,
) -> dict[str, Any]:
    cfg, ev = target.cfg, target.cfg.eval
    summaries = [summarise(r, metrics, ev.bootstrap_samples, ev.confidence) for r in results]
    fields = slice_fields(results[0].metadata, ev.slice_fields)
    slices = slice_report(
        results,
        primary,
        fields,
        ev.bootstrap_samples,
        ev.confidence,
        reference=next((n for n in BASELINES if n in {r.name for r in results}), "base"),
        tuned=tuple(r.name for r in results if r.name not in BASELINES),
    )
    flags = [f for s in slices["fields"].values() for f in s["flags"]]
    prices = costs.load_price_table(ev.prices)
    cost = costs.cost_report(summaries, _trainings(target, results, prices), prices)
    forgetting = (
        forgetting_summary(general_ppl, general_source)
        if general_source
        else {"skipped": "no general text: set eval.general_text"}
    )
    curves = loss_curves(target.run_dir) if target.run_dir else {"train": [], "validation": []}
    overfit = overfitting(curves) if target.run_dir else None
    retrieval = {
        "retriever": ev.rag_retriever,
        "k": ev.rag_k,
        "source": str(ev.rag_docs or cfg.data.train),
        "answer_in_prompt": {r.name: round(answer_in_prompt(r), 4) for r in results if r.name.endswith("rag")},
    }
    families = metric_families(primary, metrics)
    summary = verdict(
        results,
        summaries,
        primary,
        cost,
        forgetting if general_source else None,
        overfit,
        flags,
        ev.bootstrap_samples,
        ev.confidence,
        retrieval["answer_in_prompt"],
        families,
    )
    return {
        "run_dir": str(target.run_dir) if target.run_dir else None,
        "base_model": cfg.model.name,
        "test_file": str(cfg.data.test),
        "test_examples": len(results[0].predictions) if results else 0,
        "confidence": ev.confidence,
        "bootstrap_samples": ev.bootstrap_samples,
        "primary_metric": primary.name,
        "metric_families": {family: m.name for family, m in families.items()},
        "graders": _grader_report(metrics, results),
        "approaches": summaries,
        "slices": slices,
        "forgetting": forgetting,
        "training_curves": {**curves, **({"overfitting": overfit} if overfit else {})},
        "retrieval": retrieval,
        "cost": cost,
        "verdict": summary,
    }


def _grader_report(metrics: list[Metric | GraderMetric], results: list[ApproachResult]) -> dict[str, Any]:
    """Each grader's type, family, and per approach how many answers it could not grade (scored 0) and why."""
    out = {}
    for m in metrics:
        if isinstance(m, GraderMetric):
            errors = {r.name: [e for e in r.grade_errors[m.name] if e] for r in results}
            out[m.name] = {
                "type": m.type,
                "family": m.family,
                "errors": {n: len(e) for n, e in errors.items()},
                "first_errors": {n: e[:3] for n, e in errors.items() if e},
            }
    return out


def _load_run(run: Path):
    """A run's model for inference; mergeable adapters (LoRA, IA3...) are folded into the base first (same
    outputs, no adapter overhead on every forward - about a third of generation time on the demo model)."""
    artifact = find_artifact(run)
    return load_for_inference(run, merge=bool(artifact and artifact.can_merge))


def _trainings(target: EvalTarget, results: list[ApproachResult], prices) -> dict[str, dict[str, Any]]:
    """Training cost of the run behind each tuned approach (fine_tuned and fine_tuned+rag share one)."""
    runs = {r.name: Path(r.model) for r in results if r.name not in costs.BASELINES}
    out, by_run = {}, {}
    for name, run in runs.items():
        if run not in by_run:
            cfg = target.cfg if run == target.run_dir else _load_run_config(run / "config.yaml", None)
            by_run[run] = costs.training_cost(cfg, load_tokenizer(run), run, prices)
        out[name] = by_run[run]
    return out


def write_outputs(report: dict[str, Any], results: list[ApproachResult], out_dir: Path) -> None:
    from tuneforge.eval.report import render_html

    (out_dir / "eval.json").write_text(json.dumps(report, indent=2))
    preds = out_dir / "predictions"
    preds.mkdir(exist_ok=True)
    for r in results:
        write_predictions(prediction_rows(r), preds / f"{r.name.replace('+', '_plus_')}.jsonl")
    (out_dir / "eval_report.html").write_text(render_html(report, results), encoding="utf-8")


def _check_approaches(
    asked: list[str] | None, target: EvalTarget, encoder: bool, say: Callable[[str], None]
) -> list[str]:
    """The approaches to score: `asked` (--approaches), else eval.approaches; on an encoder the default list
    becomes the embedding baselines, and chat approaches asked for by name are refused with the reason."""
    cfg = target.cfg
    names = asked or cfg.eval.approaches
    where = "--approaches" if asked else "eval.approaches"
    if not asked and names == EvalSection.model_fields["approaches"].default and _is_head(cfg):
        if encoder:
            say(
                f"{cfg.model.name} is an encoder: scoring {', '.join(ENCODER_DEFAULT)} "
                f"(it cannot answer the chat prompts of {', '.join(CHAT_ONLY)})"
            )
            names = list(ENCODER_DEFAULT)
        else:  # a generative base can still be prompted; its classifier fine-tune cannot
            say("objective classification: scoring the embedding baselines too, and no fine_tuned+rag (a head)")
            names = [*costs.BASELINES, "fine_tuned"]
    unknown = [n for n in names if n not in APPROACHES]
    if unknown:
        raise ConfigError(
            "unknown approach(es)",
            [Problem(where, f"'{n}'", f"use {', '.join(APPROACHES)}; other runs go in --run") for n in unknown],
        )
    refused = [n for n in names if n in CHAT_ONLY and (encoder or (n == "fine_tuned+rag" and _is_head(cfg)))]
    if refused:
        why = (
            f"{cfg.model.name} is an encoder: it cannot generate an answer to a chat prompt"
            if encoder
            else "a classifier's head takes the text alone: there is no prompt to put passages in"
        )
        raise ConfigError(
            "approach(es) that do not fit this model",
            [Problem(where, f"'{n}': {why}", f"use {', '.join(ENCODER_DEFAULT)}") for n in refused],
        )
    if target.run_dir is None:
        return [
            n for n in names if n not in TUNED
        ]  # not trained yet: the baselines still answer "is fine-tuning needed?"
    return names


def _is_head(cfg: RunConfig) -> bool:
    return cfg.objective == "classification"


def _unique(name: str, taken: list[str]) -> str:
    out, k = name, 2
    while out in taken or out in APPROACHES:
        out, k = f"{name}-{k}", k + 1
    return out
