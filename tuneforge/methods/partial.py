"""Partial fine-tuning: train a chosen subset of the base weights, freeze the rest.

`freeze` picks the top k transformer blocks, name patterns, or norms and biases (BitFit);
`head` is transfer learning: the backbone is frozen and only the new task head learns.
Both change base weights, so the artifact is a whole HF `model/` folder.
"""

from __future__ import annotations

import re

from torch import nn

from tuneforge.errors import ConfigError, Problem
from tuneforge.methods.registry import Method, is_new_head_task, register, save_model_folder, task_head_parameters


def block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer blocks: the longest ModuleList in the model (layers, encoder.layer, h...)."""
    lists = [(name, mod) for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and len(mod) > 0]
    if not lists:
        raise ConfigError(f"{type(model).__name__} has no list of transformer blocks",
                          [Problem("method.top_layers", "cannot find the blocks to unfreeze", "use method.patterns instead")])
    return max(lists, key=lambda item: len(item[1]))


def _top_layer_names(model: nn.Module, k: int) -> set[str]:
    """Parameters of the top k blocks and of everything after the blocks (final norm, pooler, head)."""
    prefix, blocks = block_list(model)
    if k > len(blocks):
        raise ConfigError(f"method.top_layers={k} but the model has {len(blocks)} blocks",
                          [Problem("method.top_layers", f"at most {len(blocks)}", f"use a value from 1 to {len(blocks)}")])
    top = tuple(f"{prefix}.{i}." for i in range(len(blocks) - k, len(blocks)))
    names = [n for n, _ in model.named_parameters()]
    # registration order puts the final norm / pooler / head after the last block
    last_block = max(i for i, n in enumerate(names) if n.startswith(f"{prefix}."))
    return {n for n in names if n.startswith(top)} | set(names[last_block + 1:])


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
        raise ConfigError("the method selects no parameter to train", [Problem(where, "nothing matched", "check the patterns against model.named_parameters()")])
    for name, p in model.named_parameters():
        p.requires_grad_(name in names)
    return model


def _matching(model: nn.Module, patterns: list[str]) -> set[str]:
    compiled = [re.compile(p) for p in patterns]
    return {n for n, _ in model.named_parameters() if any(c.search(n) for c in compiled)}


def _apply_freeze(model: nn.Module, cfg) -> nn.Module:
    names = _matching(model, cfg.patterns)
    if cfg.top_layers:
        names |= _top_layer_names(model, cfg.top_layers)
    if cfg.norms_and_biases:
        names |= _norm_and_bias_names(model)
    if is_new_head_task(model):  # a freshly initialised head always trains
        names |= set(task_head_parameters(model))
    return _train_only(model, names, "method")


def _apply_head(model: nn.Module, cfg) -> nn.Module:
    if not is_new_head_task(model):
        raise ConfigError(f"method head needs a task head; {type(model).__name__} has none",
                          [Problem("objective", "not a classification objective", "use objective classification or tokens")])
    return _train_only(model, set(task_head_parameters(model)) | _matching(model, cfg.also_train), "method.also_train")


register(Method("freeze", _apply_freeze, save_model_folder, lambda m: m, folder="model"))
register(Method("head", _apply_head, save_model_folder, lambda m: m, folder="model"))
