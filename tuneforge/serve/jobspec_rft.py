"""OpenAI's reinforcement fine-tuning (`method: {type: "reinforcement", reinforcement: {grader, hyperparameters}}`)
as a tuneforge `objective: grpo` run.

OpenAI's grader objects are nearly tuneforge's own (`tuneforge.eval.graders.spec`): this module only undoes
the differences of the wire format (a score_model message's content parts, a multi grader's single sub-grader),
refuses what a remote caller may not run (a python grader's code, a judge endpoint of its choosing) unless the
operator allows unsafe job options, and validates the result with the same schema as `grpo.graders`, every
problem at OpenAI's field (`method.reinforcement.grader.operation`).

Hyperparameters, with "auto" as noted:

    n_epochs, batch_size, learning_rate_multiplier   as for supervised jobs (batch_size: prompts per step)
    compute_multiplier   answers sampled per prompt: grpo.group_size = max(2, round(4 x multiplier)) (auto: 1 -> 4)
    eval_interval        train.eval_every, in optimizer steps (auto: tuneforge's default, 50)
    eval_samples         answers sampled per validation prompt, grpo.eval_samples (auto: the group size)
    reasoning_effort     "default" only: the base models here have no reasoning mode
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from tuneforge.config import GrpoSection, TrainSection
from tuneforge.errors import ConfigError, Problem
from tuneforge.eval.graders.spec import GRADER_TYPES, GraderSpec, name_problems

Auto = Literal["auto"]
WHERE = "method.reinforcement"
GROUP_SIZE = GrpoSection.model_fields["group_size"].default  # answers per prompt at compute_multiplier 1
UNSAFE_FIX = "remove it, or ask the operator to set TUNEFORGE_ALLOW_UNSAFE_JOB_OPTIONS=1"


class ReinforcementHyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: int | float | Auto = Field("auto", description="Passes over the training prompts.")
    batch_size: int | float | Auto = Field("auto", description="Prompts per optimizer step.")
    learning_rate_multiplier: float | Auto = Field("auto", description="Times the method's base learning rate.")
    compute_multiplier: float | Auto = Field(
        "auto", description="Sampling effort: grpo.group_size = max(2, round(4 x multiplier)) answers per prompt."
    )
    eval_interval: int | float | Auto = Field("auto", description="Optimizer steps between validations.")
    eval_samples: int | float | Auto = Field("auto", description="Answers sampled per validation prompt.")
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = Field(
        None, description="Only 'default': the base models served here have no reasoning mode."
    )
    beta: None = Field(None, description="Not a reinforcement hyperparameter (dpo only).")


class ReinforcementDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grader: dict[str, Any] = Field(..., description="An OpenAI grader object (string_check, python, multi...).")
    hyperparameters: ReinforcementHyperparameters = Field(default_factory=ReinforcementHyperparameters)


# (low, high, low is exclusive, integer) - OpenAI's ranges where it documents them
RANGES: dict[str, tuple[float, float, bool, bool]] = {
    "n_epochs": (1, 50, False, True),
    "batch_size": (1, 256, False, True),
    "learning_rate_multiplier": (0, 10, True, False),
    "compute_multiplier": (0, 10, True, False),
    "eval_interval": (1, 10_000, False, True),
    "eval_samples": (1, 64, False, True),
}


def check_reinforcement(detail: ReinforcementDetail | None, top_level: bool, has_validation: bool) -> list[Problem]:
    """The hyperparameters' ranges and the grader's shape, each problem at its OpenAI field."""
    if top_level:
        return [
            Problem(
                "hyperparameters",
                "reinforcement jobs take their hyperparameters in the method",
                f"move them to {WHERE}.hyperparameters",
            )
        ]
    if detail is None:
        return [Problem(WHERE, "a reinforcement job needs its grader", f'give {WHERE}: {{"grader": {{...}}}}')]
    hyper, prefix, problems = detail.hyperparameters, f"{WHERE}.hyperparameters", []
    for name, (low, high, open_low, integer) in RANGES.items():
        value = getattr(hyper, name)
        if value == "auto":
            continue
        bad_type = isinstance(value, bool) or (integer and not float(value).is_integer())
        if bad_type or (value <= low if open_low else value < low) or value > high:
            bounds = f"{'greater than' if open_low else 'at least'} {low} and at most {high}"
            kind = "an integer" if integer else "a number"
            problems.append(Problem(f"{prefix}.{name}", f"must be {kind} {bounds}, got {value!r}", 'or "auto"'))
    if hyper.reasoning_effort not in (None, "default"):
        problems.append(
            Problem(
                f"{prefix}.reasoning_effort",
                f"{hyper.reasoning_effort!r}: the base models here have no reasoning mode",
                'remove it or use "default"',
            )
        )
    for name in ("eval_interval", "eval_samples"):
        if getattr(hyper, name) != "auto" and not has_validation:
            problems.append(
                Problem(f"{prefix}.{name}", "applies to validation, and the job has no validation_file", "add one")
            )
    return problems


def resolve_reinforcement(hyper: ReinforcementHyperparameters, resolved: dict[str, Any]) -> dict[str, Any]:
    """The job's hyperparameters with every "auto" of the reinforcement ones filled in (as the job reports them);
    `resolved` holds the supervised ones (`jobspec.resolve_hyperparameters`)."""
    mult = 1.0 if hyper.compute_multiplier == "auto" else float(hyper.compute_multiplier)
    group = max(2, round(GROUP_SIZE * mult))
    every = TrainSection.model_fields["eval_every"].default if hyper.eval_interval == "auto" else hyper.eval_interval
    samples = group if hyper.eval_samples == "auto" else int(hyper.eval_samples)
    return {**resolved, "compute_multiplier": mult, "eval_interval": int(every), "eval_samples": samples}


def job_options(
    method: Any, hyper: dict[str, Any], options: dict[str, Any], train_file: Any, val_file: Any, allow_unsafe: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A job's (hyperparameters, tuneforge options) once its method is known: a reinforcement job's resolved
    hyperparameters and grpo options; for every method, the files' format checked against it (RFT prompts
    train only a reinforcement job) and graders a remote caller may not run refused."""
    problems = remote_grader_problems(options, allow_unsafe)
    rl = method.type == "reinforcement"
    for param, row in (("training_file", train_file), ("validation_file", val_file)):
        fmt = (row.validation or {}).get("format") if row is not None else None
        if row is None or fmt is None:
            continue
        if rl and fmt != "rft":
            problems.append(
                Problem(
                    param,
                    f"file {row.id} holds {fmt} records; reinforcement trains on prompts without answers (RFT JSONL)",
                    "upload records whose messages end in a user turn, plus the fields the grader reads",
                )
            )
        elif not rl and fmt == "rft":
            problems.append(
                Problem(
                    param,
                    f"file {row.id} holds prompts without answers (RFT JSONL): nothing for {method.type} to learn from",
                    'use method {"type": "reinforcement", "reinforcement": {"grader": {...}}}',
                )
            )
    if problems:
        raise ConfigError("invalid job", problems)
    if not rl:
        return hyper, options
    hyper = resolve_reinforcement(method.reinforcement.hyperparameters, hyper)
    return hyper, reinforcement_options(method.reinforcement, hyper, options, allow_unsafe)


def error_code(exc: ConfigError) -> str:
    """The API error code of `job_options`' first problem."""
    where = exc.problems[0].where
    if where in ("training_file", "validation_file"):
        return f"invalid_{where}"
    return "invalid_grader" if ".grader" in where else "invalid_options"


def reinforcement_options(
    detail: ReinforcementDetail, hyper: dict[str, Any], options: dict[str, Any], allow_unsafe: bool
) -> dict[str, Any]:
    """The job's tuneforge options with the run this method means: `objective: grpo`, the grader as the reward,
    the group size and validation settings of `hyper`. ConfigError naming OpenAI's fields when invalid."""
    grader, problems = translate_grader(detail.grader, f"{WHERE}.grader", allow_unsafe)
    given = options.get("grpo") or {}
    if not isinstance(given, dict):
        problems.append(Problem("tuneforge.grpo", "must be an object (a partial grpo: section)", 'e.g. {"beta": 0.04}'))
        given = {}
    if options.get("objective", "grpo") != "grpo":
        problems.append(
            Problem("tuneforge.objective", "a reinforcement job trains objective grpo", "remove tuneforge.objective")
        )
    for key in ("graders", "weights", "group_size", "eval_samples"):
        if key in given:
            problems.append(
                Problem(f"tuneforge.grpo.{key}", f"is set from {WHERE}", f"remove it and use {WHERE} instead")
            )
    if problems:
        raise ConfigError("invalid reinforcement method", problems)
    out = copy.deepcopy(options)
    out["objective"] = "grpo"
    out["grpo"] = {
        **given,
        "graders": [grader],
        "group_size": hyper_group(hyper),
        "eval_samples": hyper["eval_samples"],
    }
    out.setdefault("train", {}).setdefault("eval_every", hyper["eval_interval"])
    return out


def hyper_group(hyper: dict[str, Any]) -> int:
    return max(2, round(GROUP_SIZE * float(hyper["compute_multiplier"])))


# ---- graders: OpenAI's wire format -> tuneforge's spec

_ADAPTER = TypeAdapter(GraderSpec)


def translate_grader(obj: Any, where: str, allow_unsafe: bool) -> tuple[dict[str, Any], list[Problem]]:
    """An OpenAI grader object as a tuneforge grader config, and the problems found (validated by the grader
    schema; pydantic's locations rewritten to `where.field`)."""
    problems: list[Problem] = []
    grader = _unwire(obj, where, allow_unsafe, problems)
    if problems:
        return grader, problems
    try:
        spec = _ADAPTER.validate_python(grader)
    except ValidationError as exc:
        return grader, [_problem(where, err) for err in exc.errors()]
    problems += [
        Problem(f"{where}.name", p.split(": ", 1)[1], "name the grader (OpenAI requires it)")
        for p in name_problems([spec], set())
    ]
    return grader, problems


def _unwire(obj: Any, where: str, allow_unsafe: bool, problems: list[Problem]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        problems.append(Problem(where, f"must be a grader object, got {type(obj).__name__}", "see the grader types"))
        return {}
    kind = obj.get("type")
    g = dict(obj)
    if kind == "label_model":
        problems.append(
            Problem(
                f"{where}.type",
                "label_model graders are not supported yet",
                "use score_model (a number in a range) or string_check",
            )
        )
    elif kind not in GRADER_TYPES:
        problems.append(
            Problem(f"{where}.type", f"unknown grader type {kind!r}", f"use one of {', '.join(GRADER_TYPES)}")
        )
    elif kind == "python":
        if "image_tag" in g:
            problems.append(
                Problem(
                    f"{where}.image_tag",
                    "tuneforge runs python graders in the worker's own Python, not in an image",
                    "remove it",
                )
            )
        if not allow_unsafe:
            problems.append(
                Problem(f"{where}.type", "a python grader from the API is arbitrary code run on the server", UNSAFE_FIX)
            )
    elif kind == "score_model":
        g = _unwire_judge(g, where, allow_unsafe, problems)
    elif kind == "multi":
        subs = g.get("graders")
        if isinstance(subs, dict) and isinstance(subs.get("type"), str):  # the SDK's form: one sub-grader object
            subs = {subs.get("name") or subs["type"]: subs}
        if isinstance(subs, dict):
            g["graders"] = {k: _unwire(v, f"{where}.graders.{k}", allow_unsafe, problems) for k, v in subs.items()}
    return g


def _unwire_judge(g: dict[str, Any], where: str, allow_unsafe: bool, problems: list[Problem]) -> dict[str, Any]:
    """score_model: messages' `type: message` dropped (the only kind), content parts joined into text, unset
    sampling parameters dropped; the judge endpoint is the operator's, never the caller's."""
    for key in ("base_url", "api_key_env"):
        if key in g and not allow_unsafe:
            problems.append(
                Problem(
                    f"{where}.{key}",
                    "the judge endpoint of a job is the worker's (OPENAI_BASE_URL / OPENAI_API_KEY)",
                    UNSAFE_FIX,
                )
            )
    messages = []
    for i, message in enumerate(g.get("input") or []):
        if not isinstance(message, dict):
            messages.append(message)
            continue
        m = {k: v for k, v in message.items() if not (k == "type" and v == "message")}
        content = m.get("content")
        if isinstance(content, dict):
            content = [content]
        if isinstance(content, list):
            texts = []
            for j, part in enumerate(content):
                if isinstance(part, str):
                    texts.append(part)
                elif isinstance(part, dict) and part.get("type") in ("input_text", "output_text") and "text" in part:
                    texts.append(part["text"])
                else:
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    problems.append(
                        Problem(
                            f"{where}.input[{i}].content[{j}]",
                            f"content of type {kind!r} is not supported (judges read text)",
                            "give the message's content as text",
                        )
                    )
            m["content"] = "\n".join(texts)
        messages.append(m)
    if "input" in g:
        g["input"] = messages
    params = g.get("sampling_params")
    if isinstance(params, dict):
        params = {k: v for k, v in params.items() if v is not None}
        if "reasoning_effort" in params:
            problems.append(
                Problem(
                    f"{where}.sampling_params.reasoning_effort",
                    "the judges served here have no reasoning mode",
                    "remove it",
                )
            )
        g["sampling_params"] = params
    return g


def _problem(where: str, err: dict[str, Any]) -> Problem:
    """A pydantic error of the grader schema at OpenAI's field: the union's type tags dropped from the location."""
    loc = [str(p) for p in err["loc"] if p not in GRADER_TYPES]
    path = where + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in loc)
    message = err["msg"].removeprefix("Value error, ")
    fix = "remove it" if err["type"] == "extra_forbidden" else "see the grader's fields in the README"
    if err["type"] == "union_tag_invalid":
        fix = f"use one of {', '.join(GRADER_TYPES)}"
    return Problem(path, message, fix)


# ---- what a remote caller may not put in tuneforge.grpo / tuneforge.eval graders either


def remote_grader_problems(options: dict[str, Any], allow_unsafe: bool) -> list[Problem]:
    """Graders in the job's tuneforge options that run code or choose a judge endpoint (unless allowed)."""
    if allow_unsafe:
        return []
    problems: list[Problem] = []
    for section in ("grpo", "eval"):
        graders = (options.get(section) or {}).get("graders") if isinstance(options.get(section), dict) else None
        for i, g in enumerate(graders if isinstance(graders, list) else []):
            _unsafe_parts(g, f"tuneforge.{section}.graders[{i}]", problems)
    return problems


def _unsafe_parts(g: Any, where: str, problems: list[Problem]) -> None:
    if not isinstance(g, dict):
        return
    if g.get("type") == "python":
        problems.append(
            Problem(f"{where}.type", "a python grader from the API is arbitrary code run on the server", UNSAFE_FIX)
        )
    for key in ("base_url", "api_key_env"):
        if g.get("type") == "score_model" and key in g:
            problems.append(Problem(f"{where}.{key}", "the judge endpoint of a job is the worker's", UNSAFE_FIX))
    if g.get("type") == "multi" and isinstance(g.get("graders"), dict):
        for key, sub in g["graders"].items():
            _unsafe_parts(sub, f"{where}.graders.{key}", problems)


# ---- events: the reward metrics of a step or a validation


def reward_event_data(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    """The reward metrics of a grpo step (`train`) or validation (`valid`) as job event fields:
    {prefix}_reward_mean / _reward_std, per grader {prefix}_grader/NAME (and /errors), and for training steps
    kl, completion_length and zero_advantage_groups."""
    if "reward" not in metrics:
        return {}
    out = {f"{prefix}_reward_mean": metrics["reward"], f"{prefix}_reward_std": metrics.get("reward_std", 0.0)}
    for key in ("kl", "completion_length", "zero_advantage_groups"):
        if key in metrics:
            out[f"{prefix}_{key}"] = metrics[key]
    out.update({f"{prefix}_{k}": v for k, v in metrics.items() if k.startswith("grader/")})
    return out
