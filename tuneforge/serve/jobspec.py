"""Turn an OpenAI fine-tuning request into a tuneforge `RunConfig`.

OpenAI's knobs (n_epochs, batch_size, learning_rate_multiplier, each possibly "auto")
map onto `train`; tuneforge's own options arrive as a partial run config under the
request's `tuneforge` key (e.g. `{"method": {"name": "lora", "r": 16}, "train":
{"max_steps": 50}}`) and are validated by the same schema the CLI uses, so a typo is a
400 naming the key.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tuneforge.config import RunConfig, TrainSection, validate_config
from tuneforge.errors import ConfigError, Problem
from tuneforge.methods.registry import DEFAULT_METHOD, available_methods, get_method
from tuneforge.serve.jobspec_rft import ReinforcementDetail

Auto = Literal["auto"]
SERVER_OWNED = {"data", "output_dir"}  # the service fills these in from the job


class Hyperparameters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n_epochs: int | float | Auto = Field(
        "auto", description="Passes over the training file; auto scales with its size."
    )
    batch_size: int | float | Auto = Field("auto", description="Examples per step; auto scales with the file size.")
    learning_rate_multiplier: float | Auto = Field("auto", description="Times the method's base learning rate.")
    beta: float | Auto | None = Field(
        None, description="DPO only: strength of the pull towards the reference model (train.dpo_beta; auto: 0.1)."
    )


class MethodDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)


class MethodSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["supervised", "dpo", "reinforcement"] = "supervised"
    supervised: MethodDetail | None = None
    dpo: MethodDetail | None = None
    reinforcement: ReinforcementDetail | None = None  # objective grpo: jobspec_rft.py


class CreateJob(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters | None = None
    method: MethodSpec | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_\-.]*$")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="Fits the jobs table's INTEGER column.")
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    tuneforge: dict[str, Any] | None = Field(
        None, description="A partial tuneforge run config (method, train, model, eval, objective)."
    )

    def resolved_method(self) -> MethodSpec:
        method = self.method or MethodSpec()
        if method.type == "reinforcement":  # its grader has no default; top-level hyperparameters are refused
            return method
        detail = getattr(method, method.type) or MethodDetail()
        if self.hyperparameters is not None:  # the older top-level form
            detail = MethodDetail(hyperparameters=self.hyperparameters)
        return MethodSpec(type=method.type, **{method.type: detail})


DPO_BETA = TrainSection.model_fields["dpo_beta"].default  # what beta "auto" means


# OpenAI's documented ranges: (low, high, low is exclusive, what "auto" means here).
RANGES: dict[str, tuple[float, float, bool, str]] = {
    "n_epochs": (1, 50, False, "about 3, scaled to the file's size"),
    "batch_size": (1, 256, False, "about 0.2% of the examples, at most 32"),
    "learning_rate_multiplier": (0, 10, True, "1.0 (the method's base learning rate)"),
    "beta": (0, 2, True, f"{DPO_BETA}"),
}


def check_method(method: MethodSpec, top_level: bool = False) -> list[Problem]:
    """OpenAI's hyperparameter ranges, each problem at OpenAI's field (`method.TYPE.hyperparameters.X`, or
    `hyperparameters.X` for the older top-level form)."""
    detail = getattr(method, method.type)
    hyper = detail.hyperparameters if detail else Hyperparameters()
    prefix = "hyperparameters" if top_level else f"method.{method.type}.hyperparameters"
    if method.type == "supervised" and hyper.beta is not None:
        return [Problem(f"{prefix}.beta", "beta applies to dpo only", "remove it")]
    problems = []
    for name, (low, high, open_low, auto) in RANGES.items():
        value = getattr(hyper, name)
        if value is None or value == "auto":
            continue
        bad_type = isinstance(value, bool) or (name in ("n_epochs", "batch_size") and not float(value).is_integer())
        too_low = value <= low if open_low else value < low
        if bad_type or too_low or value > high:
            bounds = f"{'greater than' if open_low else 'at least'} {low} and at most {high}"
            kind = "an integer" if name in ("n_epochs", "batch_size") else "a number"
            problems.append(
                Problem(
                    f"{prefix}.{name}", f"must be {kind} {bounds}, got {value!r}", f'use {bounds} or "auto" ({auto})'
                )
            )
    return problems


def resolve_hyperparameters(
    h: Hyperparameters, n_examples: int, method_name: str, method_type: str = "supervised"
) -> dict[str, Any]:
    """Fill in 'auto' the way OpenAI describes it: about 3 epochs, more for tiny files and
    fewer for big ones (keeping epochs x examples within [100, 25000]), batch ~0.2% of the data."""
    n = max(n_examples, 1)
    epochs = (
        int(h.n_epochs) if h.n_epochs != "auto" else int(min(25, max(1, min(max(3, math.ceil(100 / n)), 25000 // n))))
    )
    batch = int(h.batch_size) if h.batch_size != "auto" else int(min(32, max(1, round(n * 0.002))))
    mult = h.learning_rate_multiplier if h.learning_rate_multiplier != "auto" else 1.0
    out: dict[str, Any] = {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": mult}
    if method_type == "dpo":
        out["beta"] = h.beta if isinstance(h.beta, (int, float)) else DPO_BETA
    out["learning_rate"] = base_lr(method_name) * mult
    return out


def check_integrations(integrations: list[dict[str, Any]] | None) -> list[Problem]:
    """OpenAI's `integrations` (Weights & Biases) are refused by name, never dropped: tuneforge has no W&B
    tracker and reports to MLflow or TensorBoard through `tuneforge.train.report_to` instead."""
    fix = (
        'remove it and set "tuneforge": {"train": {"report_to": ["mlflow"]}} (the server\'s MLflow store) '
        'or ["tensorboard"]'
    )
    problems = []
    for i, item in enumerate(integrations or []):
        kind = item.get("type") if isinstance(item, dict) else None
        why = (
            "Weights & Biases is not available on this server: tuneforge has no W&B tracker"
            if kind == "wandb"
            else f"integration type {kind!r} is not supported (OpenAI's jobs API knows wandb only)"
        )
        problems.append(Problem(f"integrations[{i}].type", why, fix))
    return problems


def check_options(options: dict[str, Any]) -> list[Problem]:
    problems = [
        Problem(f"tuneforge.{k}", "is set by the service from the job", "remove it")
        for k in options
        if k in SERVER_OWNED
    ]
    if isinstance(options.get("model"), dict) and "name" in options["model"]:
        problems.append(Problem("tuneforge.model.name", "the base model is the request's `model`", "remove it"))
    return problems


DISTRIBUTED_KEYS = {
    "nproc_per_node": "training processes (torchrun ranks) on the worker's machine",
    "max_restarts": "times torchrun restarts the group after a failure (it resumes from a checkpoint)",
}


def check_distributed(options: dict[str, Any]) -> list[Problem]:
    """`tuneforge.distributed`: {"nproc_per_node": N, "max_restarts": K}, run by the worker under torchrun."""
    given = options.get("distributed")
    if given is None:
        return []
    if not isinstance(given, dict):
        return [
            Problem(
                "tuneforge.distributed",
                f"must be an object, got {type(given).__name__}",
                'e.g. "distributed": {"nproc_per_node": 2}',
            )
        ]
    problems = [
        Problem(f"tuneforge.distributed.{k}", "is not a distributed option", f"use {' or '.join(DISTRIBUTED_KEYS)}")
        for k in given
        if k not in DISTRIBUTED_KEYS
    ]
    for key, low in (("nproc_per_node", 1), ("max_restarts", 0)):
        value = given.get(key, low)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            problems.append(
                Problem(
                    f"tuneforge.distributed.{key}",
                    f"must be an integer >= {low}, got {value!r}",
                    f"the number of {DISTRIBUTED_KEYS[key]}",
                )
            )
    return problems


def distributed_of(options: dict[str, Any]) -> tuple[int, int]:
    """(nproc_per_node, max_restarts) of a job: (1, 0) for a one-process job."""
    given = options.get("distributed") or {}
    return int(given.get("nproc_per_node", 1)), int(given.get("max_restarts", 0))


def build_config(
    *,
    base_model: str,
    train_path: Path,
    validation_path: Path | None,
    output_dir: Path,
    method_type: str,
    hyper: dict[str, Any],
    seed: int,
    options: dict[str, Any],
) -> RunConfig:
    """The full run config of a job; ConfigError (keys prefixed `tuneforge.`) when invalid."""
    problems = check_options(options) + check_distributed(options)
    if problems:
        raise ConfigError("invalid tuneforge options", problems)
    raw: dict[str, Any] = copy.deepcopy(options)
    raw.pop("distributed", None)  # how the worker launches the run, not part of it
    raw.setdefault("objective", "dpo" if method_type == "dpo" else "sft")
    raw["output_dir"] = str(output_dir)
    raw["data"] = {"train": str(train_path), "validation": str(validation_path) if validation_path else None}
    raw.setdefault("model", {})["name"] = base_model
    train = raw.setdefault("train", {})
    train.setdefault("epochs", hyper["n_epochs"])
    train.setdefault("batch_size", hyper["batch_size"])
    train.setdefault("lr", hyper["learning_rate"])
    train.setdefault("seed", seed)
    if method_type == "dpo" and "beta" in hyper:
        train.setdefault("dpo_beta", hyper["beta"])
    return validate_config(raw, source="tuneforge", check_files=False)


def method_name(options: dict[str, Any]) -> str:
    method = options.get("method")
    return method.get("name", DEFAULT_METHOD) if isinstance(method, dict) else DEFAULT_METHOD


def base_lr(method: str) -> float:
    """The method's learning rate before learning_rate_multiplier; an unknown name is the config's to refuse."""
    return get_method(method if method in available_methods() else DEFAULT_METHOD).base_lr
