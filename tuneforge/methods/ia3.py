"""IA3 (Liu et al. 2022): learned vectors rescale chosen activations; peft swaps the modules.

Keys, values and feed-forward inputs are multiplied elementwise by trained vectors (about
0.01% of the weights). The artifact is a PEFT `adapter/` folder; the scaling folds into the
weights, so it merges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tuneforge.methods.peft_family import peft_method, task_type, trained_whole
from tuneforge.methods.registry import MethodConfig, register

if TYPE_CHECKING:
    from torch import nn


class IA3Method(MethodConfig):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(
        None, description="Modules whose activations are rescaled; null uses peft's default for the architecture."
    )
    feedforward_modules: list[str] | None = Field(
        None, description="Which of target_modules are feed-forward (scaled on their input); null uses peft's default."
    )


def _apply_ia3(model: nn.Module, cfg: IA3Method) -> nn.Module:
    from peft import IA3Config, get_peft_model

    # a new task head (or a pooler the checkpoint lacks) trains whole and is saved beside the vectors
    ia3 = IA3Config(
        target_modules=cfg.target_modules,
        feedforward_modules=cfg.feedforward_modules,
        task_type=task_type(model),
        modules_to_save=trained_whole(model) or None,
    )
    return get_peft_model(model, ia3)


register(peft_method("ia3", IA3Method, _apply_ia3, "IA3"))
