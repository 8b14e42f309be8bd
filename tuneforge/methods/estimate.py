"""Training-memory estimate for a model x method, before any weight is allocated.

The model is built from its config on the meta device (shapes only, no storage), the method
is applied to it exactly as in training, and memory is counted from the resulting
parameters as the trainer holds them (tuneforge/train/precision.py): weights in their storage
dtype (fp32 master weights when the base trains under bf16/fp16 autocast, a 16-bit or 4-bit
frozen base under adapters, fp32 adapters), autocast's 16-bit copies of the trained fp32
matrices (cached from the forward to the backward), gradients in the dtype of their parameter,
AdamW's two moments in the dtype of their parameter (torch's AdamW; no 8-bit optimizer is
offered), and activations kept for the backward pass in the compute dtype. A 70B config takes
seconds and no RAM. Full fine-tuning under bf16 is 4 + 2 + 4 + 8 = 18 bytes per parameter;
pure bf16 weights (model.dtype: bfloat16, no master) 2 + 2 + 4 = 8.

Activations follow the usual per-layer accounting (Korthikanti et al. 2022) for a
pre-norm block with memory-efficient attention (SDPA/flash: no T x T matrix kept); eager
attention adds the softmax matrix. Only the blocks from the lowest trainable one upwards
keep activations: a frozen block below every trainable weight needs no backward pass.
Gradient checkpointing keeps each block's input plus one block's activations.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig

from tuneforge.errors import ModelLoadError, Problem
from tuneforge.methods.partial import block_list
from tuneforge.methods.quantized import NF4_BYTES
from tuneforge.methods.registry import get_method

_BYTES = {"float64": 8, "float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Estimate:
    model: str
    method: str
    total_params: int
    trainable_params: int
    trainable_share: float
    memory_bytes: dict[str, int]  # weights, autocast_copies, gradients, optimizer, activations, total
    assumptions: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_model_config(ref: str | Path):
    """A transformers config from a bare config.json, a model folder, a named model or a hub id."""
    from tuneforge.models.loading import resolve_model_path

    path = Path(str(ref)).expanduser()
    source = str(path) if path.is_file() else resolve_model_path(ref)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot read a model config from '{ref}'",
            [
                Problem(
                    "--model",
                    str(exc).splitlines()[0][:300],
                    "give a config.json, a model folder, 'demo', 'minilm' or a hub id",
                )
            ],
        ) from None


def meta_model(config, task: str = "causal_lm", **head_kwargs) -> nn.Module:
    """The model with the head `task` needs, built with shapes only (no memory)."""
    from tuneforge.models.loading import MODEL_CLASSES

    for key, value in head_kwargs.items():
        setattr(config, key, value)
    with torch.device("meta"):
        return MODEL_CLASSES[task].from_config(config)


def estimate(
    ref: str | Path,
    method_cfg,
    batch: int,
    seq_len: int,
    *,
    task: str = "causal_lm",
    dtype: str = "auto",
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    attention: str = "sdpa",
    num_labels: int = 2,
) -> Estimate:
    """`dtype` is model.dtype ('auto': what the trainer loads under `precision`), `precision` train.precision
    resolved (fp32, bf16 or fp16)."""
    from tuneforge.train.precision import resolve_precision

    trains_base = not get_method(method_cfg.name).fp32_adapters
    weights = resolve_precision(precision, dtype, torch.device("meta"), trains_base).weights  # any device's choice
    dtype = str(weights).removeprefix("torch.")
    config = load_model_config(ref)
    head = {"num_labels": num_labels} if task in ("sequence_classification", "token_classification") else {}
    with torch.device("meta"):  # the method's new weights (800M LoRA weights for a 65B base) get no storage either
        model = get_method(method_cfg.name).apply(meta_model(config, task, **head), method_cfg)
    return estimate_for_model(
        model,
        method_cfg,
        batch,
        seq_len,
        dtype=dtype,
        precision=precision,
        gradient_checkpointing=gradient_checkpointing,
        attention=attention,
        name=str(ref),
    )


def estimate_for_model(
    model: nn.Module,
    method_cfg,
    batch: int,
    seq_len: int,
    *,
    dtype: str | None = None,
    precision: str | None = None,
    gradient_checkpointing: bool = False,
    attention: str = "sdpa",
    name: str = "",
) -> Estimate:
    """Count an adapted model's parameters and its training memory (works on meta and real models).

    `dtype` is the base weights' storage dtype (by default the dtype the model is in); `precision` the
    resolved train.precision (fp32, bf16, fp16; None: compute in the weights' dtype, no autocast).
    """
    dtype = dtype or _float_dtype(model)
    e = _BYTES[dtype]
    compute = 2 if precision in ("bf16", "fp16") else e  # bytes per activation element (no autocast: weights')
    method = get_method(method_cfg.name)
    fp32_adapters = method.fp32_adapters  # peft upcasts its adapter weights
    quantized_bytes = method.quantized_bytes(method_cfg) if method.quantized_bytes else None
    quantized = _quantized_weights(model) if quantized_bytes else set()
    total = trainable = 0
    weights = grads = 0.0
    for p in _unique_parameters(model):
        n = _numel(p)
        total += n
        if id(p) in quantized or hasattr(p, "quant_state"):
            stored = quantized_bytes or NF4_BYTES[False]
        elif p.requires_grad and fp32_adapters:
            stored = 4  # peft keeps adapter weights in fp32 under a 16-bit base
        else:
            stored = e
        weights += n * stored
        if p.requires_grad:
            trainable += n
            grads += n * stored  # a gradient has its parameter's dtype
    optimizer = 2 * grads  # AdamW: exp_avg and exp_avg_sq in the parameter's dtype (fp32 for fp32 weights)
    copies = _autocast_copies(model, e, fp32_adapters) if precision in ("bf16", "fp16") else 0
    acts = _activations(model, batch, seq_len, compute, gradient_checkpointing, attention)
    memory = {
        "weights": int(weights),
        "autocast_copies": int(copies),
        "gradients": int(grads),
        "optimizer": int(optimizer),
        "activations": int(acts),
    }
    memory["total"] = sum(memory.values())
    assumptions = {
        "dtype": dtype,
        "precision": precision or "no autocast",
        "master_weights": e == 4 or fp32_adapters,  # are the trained weights fp32 (updates applied in fp32)?
        "batch": batch,
        "seq_len": seq_len,
        "optimizer": "AdamW (2 states per trainable weight, in its dtype)",
        "attention": attention,
        "gradient_checkpointing": gradient_checkpointing,
        "layers_with_activations": _layers_to_backprop(model),
    }
    if quantized_bytes:
        assumptions["quantized_bytes_per_weight"] = round(quantized_bytes, 4)
    return Estimate(
        name or model.config._name_or_path,
        method_cfg.name,
        total,
        trainable,
        trainable / max(total, 1),
        memory,
        assumptions,
    )


def _float_dtype(model: nn.Module) -> str:
    dtypes = [p.dtype for p in model.parameters() if p.is_floating_point()]
    return str(max(set(dtypes), key=dtypes.count)).removeprefix("torch.") if dtypes else "float32"


def _autocast_copies(model: nn.Module, e: int, fp32_adapters: bool) -> int:
    """Bytes of autocast's cached 16-bit casts: every trained fp32 matrix of a Linear (the lm_head too) is cast
    once per forward and the copy lives until its backward has run."""
    seen: dict[int, int] = {}
    for m in model.modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.Linear) and w is not None and w.requires_grad and (fp32_adapters or e == 4):
            seen[id(w)] = w.numel()
    return 2 * sum(seen.values())


def _unique_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list({id(p): p for p in model.parameters()}.values())  # tied weights count once


def _numel(p: torch.Tensor) -> int:
    state = getattr(p, "quant_state", None)  # a packed 4-bit weight holds 2 weights per byte
    return math.prod(state.shape) if state is not None else p.numel()


def _quantized_weights(model: nn.Module) -> set[int]:
    """Weights bitsandbytes would store in 4 bits: every frozen Linear except the output head."""
    out_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    skip = {id(out_head.weight)} if out_head is not None else set()
    return {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Linear) and not m.weight.requires_grad and id(m.weight) not in skip
    }


def _layers_to_backprop(model: nn.Module) -> int:
    """Blocks that keep activations: from the lowest block holding a trainable weight upwards,
    or all of them when something below the blocks trains (embeddings, soft prompts, prefixes)."""
    prefix, blocks = block_list(model)
    names = [(n, p.requires_grad) for n, p in model.named_parameters()]
    first_block = next(i for i, (n, _) in enumerate(names) if n.startswith(prefix + "."))
    if any(t for n, t in names[:first_block]) or any(t and "prompt_encoder" in n for n, t in names):
        return len(blocks)
    for i, block in enumerate(blocks):
        if any(p.requires_grad for p in block.parameters()):
            return len(blocks) - i
    return 0


def _activations(model: nn.Module, batch: int, seq_len: int, e: int, checkpointing: bool, attention: str) -> float:
    """Bytes kept for backward: per token and block, the inputs of every matmul, norm and activation."""
    c = model.config
    h, layers = c.hidden_size, _layers_to_backprop(model)
    heads = c.num_attention_heads
    kv = h * getattr(c, "num_key_value_heads", None) // heads if getattr(c, "num_key_value_heads", None) else h
    inter = getattr(c, "intermediate_size", 4 * h)
    tokens = batch * seq_len
    # norms (2h), q/k/v outputs before and after rotary (2h + 4kv... counted as h + 2kv twice), attention output
    # and o_proj input (2h); FFN: gate and up outputs, activation and product (4 * intermediate)
    per_block = e * tokens * (6 * h + 3 * kv + 4 * inter)
    if attention == "eager":
        per_block += e * batch * heads * seq_len * seq_len * 2  # scores and softmax probabilities (B, heads, T, T)
    blocks = (layers * e * tokens * h + per_block) if checkpointing and layers else layers * per_block
    head = _head_activations(model, tokens, e)
    return blocks + head


def _head_activations(model: nn.Module, tokens: int, e: int) -> float:
    """A language-model head's logits dominate for big vocabularies: (B, T, V) in the model dtype,
    their fp32 upcast for the loss, and the fp32 gradient of the log-softmax."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is None:
        return 0.0
    return tokens * out.weight.shape[0] * (e + 4 + 4)
