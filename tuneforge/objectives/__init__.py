"""What is learned: each objective turns examples into features, batches and a loss.

An objective is a small object (see `base.Objective`); `get_objective(name)` finds it.
Methods (how parameters are adapted) are independent of objectives.
"""

from __future__ import annotations

from tuneforge.errors import ConfigError, Problem
from tuneforge.objectives.base import Objective
from tuneforge.objectives.lm import CausalLM, SupervisedChat

_OBJECTIVES: dict[str, Objective] = {}


def register_objective(objective: Objective) -> Objective:
    _OBJECTIVES[objective.name] = objective
    return objective


def get_objective(name: str) -> Objective:
    if name not in _OBJECTIVES:
        raise ConfigError(f"unknown objective '{name}'", [Problem("objective", f"'{name}' is not registered", f"use one of {sorted(_OBJECTIVES)}")])
    return _OBJECTIVES[name]


register_objective(SupervisedChat())
register_objective(CausalLM())
