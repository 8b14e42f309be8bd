"""The search space of `tuneforge tune --space KEY=DIST(ARGS)`: parsing with located errors, sampling, overrides.

A parameter is named by its config key (`train.lr`, `method.r`); a sampled value becomes the
`key=value` override that `tuneforge train CONFIG key=value` takes, so a trial's config is made
exactly as a hand-written override would make it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import optuna
import yaml

from tuneforge.errors import ConfigError, Problem

Kind = Literal["loguniform", "uniform", "int", "choice"]
Scalar = bool | int | float | str | None
ALLOWED = "loguniform(low,high), uniform(low,high), int(low,high[,step]) or choice(a,b,...)"
_SPEC = re.compile(r"^\s*(?P<key>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)\s*=\s*(?P<kind>\w+)\s*\((?P<args>.*)\)\s*$")


@dataclass(frozen=True)
class Param:
    """One searched config key: a range (low..high, log scale for loguniform) or a list of choices."""

    key: str
    kind: Kind
    spec: str  # the --space text, for messages
    low: float | int | None = None
    high: float | int | None = None
    step: int = 1
    choices: tuple[Scalar, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Scalar:
        if self.kind == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), step=self.step)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.kind == "loguniform")

    def corners(self) -> list[Scalar]:
        """The values that bound the space (both ends, every choice): validating these validates the whole range."""
        return list(self.choices) if self.kind == "choice" else [self.low, self.high]

    def override(self, value: Scalar) -> str:
        return f"{self.key}={yaml_scalar(value)}"


def yaml_scalar(value: Scalar) -> str:
    """`value` as YAML that reads back as its type (PyYAML reads a bare `1e-05` as a string, `1.0e-05` as a float)."""
    return yaml.safe_dump(value, default_flow_style=True).removesuffix("\n...\n").strip()


def parse_space(specs: list[str]) -> list[Param]:
    """Every `--space` parsed; all problems reported at once, each naming its --space and what is allowed."""
    params, problems, seen = [], [], {}
    for i, spec in enumerate(specs, 1):
        where = f"--space #{i} '{spec}'"
        try:
            param = _parse_one(spec)
        except ValueError as exc:
            problems.append(Problem(where, str(exc), f"write KEY=DIST(ARGS) with DIST one of {ALLOWED}"))
            continue
        if param.key in seen:
            problems.append(
                Problem(
                    where,
                    f"{param.key} is already searched by --space #{seen[param.key]}",
                    "give each config key one --space",
                )
            )
        elif param.key == "output_dir":
            problems.append(
                Problem(
                    where,
                    "output_dir is the study folder, not a hyperparameter",
                    "set it in the config or as an override; each trial gets <output_dir>/trial-NNNN",
                )
            )
        else:
            seen[param.key] = i
            params.append(param)
    if not specs:
        problems.append(Problem("--space", "nothing to search", "add e.g. --space 'train.lr=loguniform(1e-5,1e-3)'"))
    if problems:
        raise ConfigError(f"{len(problems)} problem(s) in the search space", problems)
    return params


def _parse_one(spec: str) -> Param:
    m = _SPEC.match(spec)
    if not m:
        raise ValueError("not of the form KEY=DIST(ARGS) with a dotted config key such as train.lr")
    key, kind, args = m["key"], m["kind"], [a.strip() for a in m["args"].split(",")] if m["args"].strip() else []
    if kind == "choice":
        if not args or any(a == "" for a in args):
            raise ValueError("choice needs one or more comma-separated values, none empty")
        choices = tuple(_scalar(a) for a in args)
        if len(set(map(repr, choices))) != len(choices):
            raise ValueError("choice lists a value twice")
        return Param(key, "choice", spec, choices=choices)
    if kind not in ("loguniform", "uniform", "int"):
        raise ValueError(f"unknown distribution '{kind}'")
    wanted = (2, 3) if kind == "int" else (2,)
    if len(args) not in wanted:
        raise ValueError(f"{kind} takes {' or '.join(map(str, wanted))} numbers, got {len(args)}")
    number = _int if kind == "int" else _float
    low, high, *rest = (number(a) for a in args)
    if not low < high:
        raise ValueError(f"low ({args[0]}) must be below high ({args[1]})")
    if kind == "loguniform" and low <= 0:
        raise ValueError(f"loguniform needs low > 0 (got {args[0]}); use uniform for ranges that reach 0")
    step = rest[0] if rest else 1
    if step <= 0:
        raise ValueError(f"int step must be positive (got {step})")
    return Param(key, kind, spec, low=low, high=high, step=step)


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"'{text}' is not a finite number")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"'{text}' is not an integer") from None


def _scalar(text: str) -> Scalar:
    """A choice value: an integer, a number, true/false/null, or a (optionally quoted) string."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    try:
        value: Any = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ValueError(f"'{text}' is not a plain value") from None
    if value is not None and not isinstance(value, bool | int | float | str):
        raise ValueError(f"'{text}' is not a plain value (number, string, true/false or null)")
    return value
