"""Partial fine-tuning: train a chosen subset of the base weights, freeze the rest.

`freeze` picks the top k transformer blocks, name patterns, or norms and biases (BitFit);
`head` is transfer learning: the backbone is frozen and only the new task head learns.
Both change base weights, so the artifact is a whole HF `model/` folder.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from tuneforge.errors import ConfigError, Problem
from tuneforge.methods.registry import (
    Method,
    MethodConfig,
    Serving,
    is_new_head_task,
    new_modules,
    register,
    save_model_folder,
    task_head_parameters,
    whole_model_folder,
)

if TYPE_CHECKING:
    from torch import nn


class FreezeMethod(MethodConfig):
    name: Literal["freeze"] = "freeze"
    top_layers: int | None = Field(
        None,
        ge=1,
        description="Train the top N transformer blocks (and the final norm and output head); the rest stays frozen.",
    )
    patterns: list[str] = Field(
        default_factory=list,
        description="Also train parameters whose name matches one of these regular "
        "expressions (e.g. 'mlp\\.down_proj').",
    )
    norms_and_biases: bool = Field(
        False, description="Also train every normalisation weight and every bias (BitFit-style)."
    )

    @model_validator(mode="after")
    def _something_trains(self) -> FreezeMethod:
        if self.top_layers is None and not self.patterns and not self.norms_and_biases:
            raise ValueError("freeze trains nothing: set top_layers, patterns or norms_and_biases")
        return self


class HeadMethod(MethodConfig):
    name: Literal["head"] = "head"
    also_train: list[str] = Field(
        default_factory=list,
        description="Regular expressions of extra parameter names to train with the head (e.g. 'pooler').",
    )


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the longest ModuleList in the model (layers, encoder.layer, h...)."""
    from torch import nn

    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) > 0]
    if not lists:
        raise ConfigError(
            f"{type(model).__name__} has no list of transformer blocks",
            [Problem("method.top_layers", "cannot find the blocks to unfreeze", "use method.patterns instead")],
        )
    return max(lists, key=lambda item: len(item[1]))


def _top_layer_names(model: nn.Module, k: int) -> set[str]:
    """Parameters of the top k blocks and of everything after the blocks (final norm, pooler, head)."""
    prefix, blocks = block_list(model)
    if k > len(blocks):
        raise ConfigError(
            f"method.top_layers={k} but the model has {len(blocks)} blocks",
            [Problem("method.top_layers", f"at most {len(blocks)}", f"use a value from 1 to {len(blocks)}")],
        )
    top = tuple(f"{prefix}.{i}." for i in range(len(blocks) - k, len(blocks)))
    names = [n for n, _ in model.named_parameters()]
    # registration order puts the final norm / pooler / head after the last block
    last_block = max(i for i, n in enumerate(names) if n.startswith(f"{prefix}."))
    return {n for n in names if n.startswith(top)} | set(names[last_block + 1 :])


def _norm_and_bias_names(model: nn.Module) -> set[str]:
    out = set()
    for mod_name, module in model.named_modules():
        is_norm = "norm" in type(module).__name__.lower()
        for p_name, _ in module.named_parameters(recurse=False):
            if is_norm or p_name == "bias":
                out.add(f"{mod_name}.{p_name}" if mod_name else p_name)
    return out


def _train_only(model: nn.Module, names: set[str], where: str) -> nn.Module:
    if not names:
        raise ConfigError(
            "the method selects no parameter to train",
            [Problem(where, "nothing matched", "check the patterns against model.named_parameters()")],
        )
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    return model


def _matching(model: nn.Module, patterns: list[str]) -> set[str]:
    compiled = [re.compile(p) for p in patterns]
    return {n for n, _ in model.named_parameters() if any(c.search(n) for c in compiled)}


def _new_parameters(model: nn.Module) -> set[str]:
    """What always trains: a new task head and every module the checkpoint lacked (BERT's pooler under a
    masked-LM checkpoint), which would otherwise stay at its random start in the saved model."""
    names = set(task_head_parameters(model)) if is_new_head_task(model) else set()
    for module in new_modules(model):
        names |= {f"{module}.{p}" for p, _ in model.get_submodule(module).named_parameters()}
    return names


def _apply_freeze(model: nn.Module, cfg) -> nn.Module:
    names = _matching(model, cfg.patterns)
    if cfg.top_layers:
        names |= _top_layer_names(model, cfg.top_layers)
    if cfg.norms_and_biases:
        names |= _norm_and_bias_names(model)
    return _train_only(model, names | _new_parameters(model), "method")


def _apply_head(model: nn.Module, cfg) -> nn.Module:
    if not is_new_head_task(model):
        raise ConfigError(
            f"method head needs a task head; {type(model).__name__} has none",
            [Problem("objective", "not a classification objective", "use objective classification or tokens")],
        )
    return _train_only(model, _new_parameters(model) | _matching(model, cfg.also_train), "method.also_train")


def _unchanged(model: nn.Module) -> nn.Module:
    return model  # the trained weights already are the model's own


register(
    Method(
        "freeze",
        FreezeMethod,
        "model",
        _apply_freeze,
        save_model_folder,
        whole_model_folder,
        merge=_unchanged,
        serving=Serving.STANDALONE,
    )
)
register(
    Method(
        "head",
        HeadMethod,
        "model",
        _apply_head,
        save_model_folder,
        whole_model_folder,
        merge=_unchanged,
        serving=Serving.STANDALONE,
        needs_new_head=True,
    )
)
