"""The LM head's cross-entropy in chunks of tokens, never holding the (N, V) logits (`train.fused_loss`).

For a real vocabulary the logits of a step are its largest activation: 8 x 512 supervised tokens x 151,936
(Qwen) x 4 bytes is 2.5 GB, and the standard path holds them in the head's dtype and in float32 and again as
their gradient. `linear_cross_entropy` computes the same summed loss over chunks of tokens and, when training,
the gradients w.r.t. the hidden states, the head's weight and bias in the same pass (Liger's fused linear
cross-entropy, in plain PyTorch, on CPU and GPU): the backward only scales them by the incoming gradient, so the
head's FLOPs are those of the standard path and the extra memory is one chunk of logits. The caller passes
supervised positions only (`causal_lm_loss` selects them first).

Numerics follow the standard path: logits in the compute dtype (bf16 under autocast), softmax and loss in
float32, the head's weight gradient accumulated in float32 over the chunks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tuneforge.errors import ConfigError, Problem

# Logits per chunk: 2**25 float32 values are 128 MiB (256 tokens of a 128k vocabulary), large enough that
# each chunk's matmuls run at full speed, small next to the full logits of a batch.
CHUNK_ELEMENTS = 2**25
MIN_CHUNK_TOKENS = 256  # a 256k vocabulary still gets 256-row matmuls (256 MiB of float32 logits per chunk)
# train.fused_loss auto: the fused path from this vocabulary size on (bench/fused_loss.py: at 32k it already
# halves the step's peak memory at the same speed; tiny test vocabularies keep the standard path).
AUTO_MIN_VOCAB = 32_000


def chunk_tokens(vocab: int) -> int:
    return max(MIN_CHUNK_TOKENS, CHUNK_ELEMENTS // max(vocab, 1))


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    chunk: int | None = None,
) -> torch.Tensor:
    """sum over rows of cross_entropy(softcap(hidden @ weight.T + bias), targets), a float32 scalar.

    hidden (N, d), weight (V, d), targets (N,) all valid class ids (no ignore index: select the supervised
    rows first); softcap: Gemma 2's final_logit_softcapping, logits -> cap * tanh(logits / cap).
    """
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    # the casts autocast would make in F.linear, outside the Function so autograd routes their gradients back
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    bias = None if bias is None else bias.to(dtype)
    chunk = chunk or chunk_tokens(weight.shape[0])
    with torch.autocast(device, enabled=False):
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (hidden, weight, bias)):
            return _LinearCrossEntropy.apply(hidden, weight, bias, targets, chunk, softcap)
        total = hidden.new_zeros((), dtype=torch.float32)
        for i in range(0, hidden.shape[0], chunk):  # evaluation: the loss alone
            total += _chunk_loss(hidden[i : i + chunk], weight, bias, targets[i : i + chunk], softcap, None)[0]
        return total


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, softcap):
        want_h, want_w, want_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty(hidden.shape, dtype=hidden.dtype, device=hidden.device) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_b else None
        total = hidden.new_zeros((), dtype=torch.float32)
        for i in range(0, hidden.shape[0], chunk):
            h = hidden[i : i + chunk]
            loss, dlogits = _chunk_loss(h, weight, bias, targets[i : i + chunk], softcap, hidden.dtype)
            total += loss
            if want_h:
                torch.mm(dlogits, weight, out=grad_h[i : i + chunk])  # (C, V) @ (V, d)
            if want_w:
                grad_w += torch.mm(dlogits.t(), h).float()  # (V, C) @ (C, d), summed over chunks in float32
            if want_b:
                grad_b += dlogits.float().sum(0)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        scaled = [None if g is None else (g * grad_out).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*scaled, None, None, None)


def _chunk_loss(h, weight, bias, targets, softcap, grad_dtype):
    """(summed loss of one chunk, d loss / d logits in `grad_dtype` or None when `grad_dtype` is None)."""
    logits = F.linear(h, weight, bias).float()  # (C, V)
    if softcap:
        tanh = torch.tanh(logits.div_(softcap))
        logits = tanh * softcap
    lse = torch.logsumexp(logits, dim=-1)
    loss = (lse - logits.gather(1, targets[:, None]).squeeze(1)).sum()
    if grad_dtype is None:
        return loss, None
    grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place
    grad[torch.arange(len(targets), device=grad.device), targets] -= 1
    if softcap:
        grad.mul_(1 - tanh.square_())  # d(cap * tanh(z / cap)) / dz
    return loss, grad.to(grad_dtype)


def fused_head(head: torch.nn.Module, setting: str, vocab: int) -> bool:
    """Does `causal_lm_loss` take the fused path for this LM head under train.fused_loss `setting`?

    Only a plain nn.Linear qualifies: a LoRA on lm_head, a quantised (bitsandbytes) head or any other wrapper
    computes something else from its weight, so those keep the standard path (and `on` is refused for them).
    """
    if setting == "off":
        return False
    plain = type(head) is torch.nn.Linear
    if setting == "on" and not plain:
        raise not_fusable(
            f"the LM head is a {type(head).__name__}, not a plain linear layer (a LoRA or quantised head)"
        )
    return plain and (setting == "on" or vocab >= AUTO_MIN_VOCAB)


def not_fusable(cause: str) -> ConfigError:
    return ConfigError(
        "train.fused_loss: on cannot be applied to this model",
        [
            Problem(
                "train.fused_loss", cause, "set train.fused_loss: auto (the standard loss where fusing is impossible)"
            )
        ],
    )
