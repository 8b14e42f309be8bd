"""QLoRA: the frozen base loaded in 4-bit (bitsandbytes NF4/FP4), LoRA trained on top.

The 4-bit base costs ~0.5 byte per weight instead of 4; the LoRA weights and their
optimizer state stay in full precision. The adapter is saved in PEFT format like LoRA's,
and merging folds it into the *full-precision* base (re-loaded from disk), because adding
a low-rank update to 4-bit weights would re-quantize it away.
"""

from __future__ import annotations

import copy

import torch
from peft import get_peft_model, get_peft_model_state_dict, prepare_model_for_kbit_training, set_peft_model_state_dict
from torch import nn
from transformers import BitsAndBytesConfig

from tuneforge.methods.peft_family import lora_config, save_adapter
from tuneforge.methods.registry import Method, is_new_head_task, register


def _load_kwargs(cfg) -> dict:
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type, bnb_4bit_use_double_quant=cfg.double_quant,
                               bnb_4bit_compute_dtype=getattr(torch, cfg.compute_dtype))
    # bitsandbytes quantizes while loading onto the target device; it runs on CPU too
    return {"quantization_config": quant, "device_map": "cuda:0" if torch.cuda.is_available() else "cpu"}


def _apply(model: nn.Module, cfg) -> nn.Module:
    # casts norms (and a new head) to fp32 and lets inputs carry gradients into the adapters;
    # gradient checkpointing is the recipe's decision, not the method's
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, lora_config(cfg, model, use_dora=False))


def label_kwargs(config) -> dict:
    return {"num_labels": config.num_labels, "id2label": config.id2label, "label2id": config.label2id}


def merge_onto_full_precision(model: nn.Module, dtype: torch.dtype = torch.float32) -> nn.Module:
    """Reload the base unquantized, load the trained adapter into it, fold it in."""
    peft_config = copy.deepcopy(model.peft_config["default"])
    quantized = model.get_base_model()
    extra = label_kwargs(quantized.config) if is_new_head_task(quantized) else {}
    base = type(quantized).from_pretrained(peft_config.base_model_name_or_path, dtype=dtype, **extra)
    fresh = get_peft_model(base, peft_config)
    set_peft_model_state_dict(fresh, get_peft_model_state_dict(model))
    return fresh.merge_and_unload()


register(Method("qlora", _apply, save_adapter, merge_onto_full_precision, load_kwargs=_load_kwargs))
