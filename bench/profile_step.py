"""Where a tuneforge training step spends its time: torch.profiler over a few micro-batches.

    .venv/bin/python bench/profile_step.py                 # LoRA, packed (one row per pass, as tuneforge runs this model on CPU), 3 micro-batches
    .venv/bin/python bench/profile_step.py --no-packing --method full
    .venv/bin/python bench/profile_step.py --compile --dropout 0.05   # decoder layers compiled (train.compile: on)
    .venv/bin/python bench/profile_step.py --compare --dropout 0.05 --batches 6   # eager vs compiled, paired

Uses the model and data of bench/train_throughput.py and the recipe's own collate/loss.
Prints the top operators by self CPU time and the share of time in matrix multiplies.
--compile compiles the decoder layers in place as `train.compile: on` does (tuneforge/train/compile.py) and prints
the compile seconds of the warm-up step; --compare times the same batches eager and compiled, alternating in one
process (the order flips every batch), so a machine whose load drifts hits both alike.
"""  # noqa: E501 (kept as is: it is the --help text)

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--no-packing", action="store_true")
    p.add_argument(
        "--rows-per-pass",
        type=int,
        default=1,
        help="packed rows per forward/backward (tuneforge's CPU default 1; 0: all)",
    )
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default="/tmp/tuneforge-bench-train")
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout (peft's placement: on lora_A's input)")
    p.add_argument("--compile", action="store_true", help="profile with the decoder layers compiled")
    p.add_argument("--compare", action="store_true", help="paired step times eager vs compiled, no profile")
    args = p.parse_args()
    import torch
    from peft import LoraConfig, get_peft_model
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.data.tokenize import encode_conversation
    from tuneforge.data.types import Conversation, Message
    from tuneforge.objectives.base import causal_lm_loss, pack_batch, pad_batch
    from tuneforge.train.batching import row_chunks

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    C.build_assets(work, 2000)
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    model = AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32)
    if args.method == "lora":
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=args.dropout, target_modules=C.TARGET_MODULES)
        model = get_peft_model(model, lora)
    model.train()
    chats = [json.loads(line)["messages"] for line in open(work / "train.jsonl")]
    rng = random.Random(0)
    feats = [
        encode_conversation(tokenizer, Conversation([Message(m["role"], m["content"]) for m in c]), 512)
        for c in rng.sample(chats, 8 * (args.batches + 1))
    ]
    batches = [feats[i : i + 8] for i in range(0, len(feats), 8)]
    collate = (
        (lambda f: pad_batch(f, tokenizer.pad_token_id))
        if args.no_packing
        else (lambda f: pack_batch(f, tokenizer.pad_token_id, 512))
    )

    def step(fs):
        batch = collate(fs)
        for part in [batch] if args.no_packing else row_chunks(batch, args.rows_per_pass or None):
            loss, _ = causal_lm_loss(model, part)
            loss.backward()
        model.zero_grad(set_to_none=True)

    if args.compile or args.compare:
        switch = compile_layers(model)
        t = time.perf_counter()
        step(batches[0])  # warm-up: compiles
        print(f"warm-up step (compiling) {time.perf_counter() - t:.1f} s; compile {compile_seconds():.1f} s")
        if args.compare:
            return compare(step, switch, batches[1:])
    else:
        step(batches[0])  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for fs in batches[1:]:
            step(fs)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(
        e.self_cpu_time_total
        for e in events
        if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")
    )
    attn = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key or "flash_attention" in e.key)
    print(events.table(sort_by="self_cpu_time_total", row_limit=18))
    print(
        f"matrix multiplies: {100 * mm / total:.0f}% of self CPU time; attention kernels: {100 * attn / total:.0f}%; "
        f"everything else (elementwise, norms, copies, autograd bookkeeping): {100 * (total - mm - attn) / total:.0f}%"
    )


def compile_layers(model):
    """Compile the decoder layers as train.compile: on does; returns switch(on) toggling them (the same graphs)."""
    from tuneforge.train import compile as layer_compile

    layer_compile.use_cache_under_home()
    layers = layer_compile.decoder_layers(model)
    for layer in layers:
        layer.compile(dynamic=True)
    compiled = [layer._compiled_call_impl for layer in layers]

    def switch(on: bool) -> None:
        for layer, fn in zip(layers, compiled):
            layer._compiled_call_impl = fn if on else None

    return switch


def compile_seconds() -> float:
    from torch._dynamo.utils import calculate_time_spent

    return calculate_time_spent().get("total_wall_time", 0.0)


def compare(step, switch, batches) -> None:
    """Each batch eager and compiled (order flipping every batch); prints per-batch and pooled ratios."""
    eager_s, compiled_s = [], []
    for i, fs in enumerate(batches):
        times = {}
        for on in (True, False) if i % 2 else (False, True):
            switch(on)
            t = time.perf_counter()
            step(fs)
            times[on] = time.perf_counter() - t
        eager_s.append(times[False])
        compiled_s.append(times[True])
        print(
            f"batch {i}: eager {times[False]:.2f} s, compiled {times[True]:.2f} s, "
            f"x{times[False] / times[True]:.2f}, load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
    ratios = sorted(e / c for e, c in zip(eager_s, compiled_s))
    print(
        f"eager / compiled: median x{ratios[len(ratios) // 2]:.2f}, pooled x{sum(eager_s) / sum(compiled_s):.2f} "
        f"over {len(ratios)} batches; compile so far {compile_seconds():.1f} s (a new row length recompiles)"
    )


if __name__ == "__main__":
    main()
