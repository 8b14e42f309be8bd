"""One registry of adaptation methods: `method.name` in the config -> how to adapt a model.

A method registers once with a small contract (peft's pattern): `apply` swaps or freezes
modules on an unmodified base model and returns the model to train; `save` writes what
other tools load (a PEFT `adapter/` folder or an HF `model/` folder) into the run dir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from tuneforge.errors import ConfigError, Problem

ApplyFn = Callable[[nn.Module, Any], nn.Module]
SaveFn = Callable[[nn.Module, Path], Path]


def _no_load_kwargs(cfg: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Method:
    name: str
    apply: ApplyFn  # (base model, method config section) -> model to train
    save: SaveFn  # (trained model, run dir) -> folder written
    merge: Callable[[nn.Module], nn.Module]  # -> plain transformers model with the update folded in
    # extra `from_pretrained` kwargs for the base (e.g. a 4-bit quantization_config for QLoRA)
    load_kwargs: Callable[[Any], dict[str, Any]] = _no_load_kwargs


_METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in _METHODS:
        raise ConfigError(f"unknown method '{name}'", [Problem("method.name", f"'{name}' is not registered", f"use one of {sorted(_METHODS)}")])
    return _METHODS[name]


def available_methods() -> list[str]:
    return sorted(_METHODS)


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total
