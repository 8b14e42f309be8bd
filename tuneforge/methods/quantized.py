"""QLoRA: the frozen base loaded in 4-bit (bitsandbytes NF4/FP4), LoRA trained on top.

The 4-bit base costs ~0.5 byte per weight instead of 4; the LoRA weights and their
optimizer state stay in full precision. The adapter is saved in PEFT format like LoRA's,
and merging folds it into the *full-precision* base (re-loaded from disk), because adding
a low-rank update to 4-bit weights would re-quantize it away.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tuneforge.methods.peft_family import _LoraFields, lora_config, merge_peft, peft_method, trained_whole
from tuneforge.methods.registry import Serving, is_new_head_task, register

if TYPE_CHECKING:
    import torch
    from torch import nn

# bitsandbytes 4-bit: 4 bits per weight + one fp32 scale per 64 weights; double quantization
# stores the scales in 8 bits with one fp32 scale per 256 of them
NF4_BYTES = {False: 0.5 + 4 / 64, True: 0.5 + 1 / 64 + 4 / (64 * 256)}


class QLoraMethod(_LoraFields):
    name: Literal["qlora"] = "qlora"
    quant_type: Literal["nf4", "fp4"] = Field(
        "nf4", description="4-bit data type of the frozen base weights (bitsandbytes)."
    )
    double_quant: bool = Field(True, description="Quantize the per-block scales too (saves ~0.37 bit per parameter).")
    compute_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="dtype the 4-bit weights are dequantized to for matmuls (bfloat16 on GPUs)."
    )


def _load_kwargs(cfg: QLoraMethod) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=cfg.quant_type,
        bnb_4bit_use_double_quant=cfg.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, cfg.compute_dtype),
    )
    # bitsandbytes quantizes while loading onto the target device; it runs on CPU too
    return {"quantization_config": quant, "device_map": "cuda:0" if torch.cuda.is_available() else "cpu"}


def _apply(model: nn.Module, cfg: QLoraMethod) -> nn.Module:
    from peft import get_peft_model, prepare_model_for_kbit_training

    _keep_trainable_layout(model)
    _full_precision(model, trained_whole(model))
    # casts norms (and a new head) to fp32 and lets inputs carry gradients into the adapters;
    # gradient checkpointing is the recipe's decision, not the method's
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(cfg, model, use_dora=False))


def _keep_trainable_layout(model: nn.Module) -> None:
    """Keep every 4-bit layer on bitsandbytes' differentiable path for the whole training run.

    On a CPU with AVX512-BF16, a `Linear4bit` repacks its weight for an inference-only kernel
    (`gemv_4bit`) on its first eval-mode forward whose input needs no gradient (the packing check,
    validation), and takes that kernel on every later forward, training ones included. The kernel has
    no backward: with a bias its in-place `result += bias` raises "a view of a leaf Variable that
    requires grad is being used in an in-place operation"; without one the gradient through the frozen
    base weights silently stops, so the adapters of every earlier layer learn from a wrong gradient.
    Switching the repacking off costs the faster CPU inference kernel inside training only: a model
    loaded for inference (`Method.load`) keeps it.
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):  # bitsandbytes Linear4bit (>= 0.48)
            module.support_avx512bf16_for_cpu = False


def _full_precision(model: nn.Module, names: list[str]) -> None:
    """Put the modules trained whole (a new task head, a pooler the checkpoint lacks) back in fp32.

    bitsandbytes made them 4-bit layers on load like every other linear layer (a weight missing from
    the checkpoint even stays an unquantized tensor such a layer cannot run), and a 4-bit weight takes
    no gradient update. Their saved copy is what every later load uses, so the round trip stays exact;
    a pretrained module among them (ModernBERT's head) starts from its dequantized weights.
    """
    import bitsandbytes as bnb
    import torch

    for outer in names:
        for name, module in list(model.get_submodule(outer).named_modules()):
            if isinstance(module, bnb.nn.Linear4bit):
                full = torch.nn.Linear(
                    module.in_features,
                    module.out_features,
                    bias=module.bias is not None,
                    device=module.weight.device,
                    dtype=torch.float32,
                )
                state = getattr(module.weight, "quant_state", None)  # None: initialised after loading, never quantized
                with torch.no_grad():
                    weight = (
                        module.weight if state is None else bnb.functional.dequantize_4bit(module.weight.data, state)
                    )
                    full.weight.copy_(weight)
                    if module.bias is not None:
                        full.bias.copy_(module.bias)
                parent, _, child = f"{outer}.{name}".rstrip(".").rpartition(".")
                setattr(model.get_submodule(parent), child, full)


def label_kwargs(config) -> dict:
    return {"num_labels": config.num_labels, "id2label": config.id2label, "label2id": config.label2id}


def merge_onto_full_precision(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """Reload the base unquantized, load the trained adapter into it, fold it in.

    An adapter already loaded on a full-precision base (inference loads it so) merges in place.
    """
    import torch
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    quantized = model.get_base_model()
    if not getattr(quantized, "is_loaded_in_4bit", False):
        return merge_peft(model)
    peft_config = copy.deepcopy(model.peft_config["default"])
    extra = label_kwargs(quantized.config) if is_new_head_task(quantized) else {}
    base = type(quantized).from_pretrained(peft_config.base_model_name_or_path, dtype=dtype or torch.float32, **extra)
    fresh = get_peft_model(base, peft_config)
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(model))
    return fresh.merge_and_unload()


register(
    peft_method(
        "qlora",
        QLoraMethod,
        _apply,
        "LORA",
        merge=merge_onto_full_precision,
        load_kwargs=_load_kwargs,
        serving=Serving.SHARED_BASE,
        mixed_batches=True,
        quantized_bytes=lambda cfg: NF4_BYTES[cfg.double_quant],
    )
)
