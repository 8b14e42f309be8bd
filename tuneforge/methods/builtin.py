"""Built-in methods: full fine-tuning here; the other families register in their own modules."""

from __future__ import annotations

from torch import nn

from tuneforge.methods import bottleneck, partial, peft_family, quantized  # noqa: F401  (each registers its methods)
from tuneforge.methods.registry import Method, register, save_model_folder


def _apply_full(model: nn.Module, cfg) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(True)
    return model


register(Method("full", _apply_full, save_model_folder, lambda m: m, folder="model"))
