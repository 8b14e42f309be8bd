"""Where the memory of a packed LoRA training step goes: saved activations vs process RSS.

    .venv/bin/python bench/memory_step.py                      # one packed row per pass (tuneforge's CPU choice for this model)
    .venv/bin/python bench/memory_step.py --rows-per-pass 0    # every packed row of the micro-batch in one pass
    .venv/bin/python bench/memory_step.py --rows-per-pass 0 --mmap-threshold-mb 1   # glibc: big blocks via mmap

Uses the model and data of bench/train_throughput.py and the recipe's own pack/row-split/loss.
For each micro-batch of 8 chats it prints the packed shape, the bytes autograd saved for the
backward pass (counted once per storage, by shape; frozen weights included), RSS after the forward
and after the backward, and the peak RSS so far. With all rows in one pass the peak is ~2x the
live tensors: glibc keeps the fragmented heap; smaller passes or mmap'ed blocks avoid that (the
latter at the cost of page faults: see bench/README.md).
"""  # noqa: E501 (kept as is: it is the --help text)

from __future__ import annotations

import argparse
import collections
import json
import random
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows-per-pass", type=int, default=1, help="0: all rows at once")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument(
        "--mmap-threshold-mb", type=float, default=0, help="glibc M_MMAP_THRESHOLD (0: leave glibc's dynamic default)"
    )
    p.add_argument("--work", default="/tmp/tuneforge-bench-train")
    args = p.parse_args()
    if args.mmap_threshold_mb:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, int(args.mmap_threshold_mb * 2**20))  # -3 = M_MMAP_THRESHOLD
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.data.tokenize import encode_conversation
    from tuneforge.data.types import Conversation, Message
    from tuneforge.objectives.base import causal_lm_loss, pack_batch
    from tuneforge.train.batching import row_chunks

    torch.set_num_threads(2)
    work = Path(args.work)
    C.build_assets(work, 2000)
    tokenizer = AutoTokenizer.from_pretrained(work / "model")
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(work / "model", dtype=torch.float32),
        LoraConfig(r=16, lora_alpha=32, target_modules=C.TARGET_MODULES),
    )
    model.train()
    chats = [json.loads(line)["messages"] for line in open(work / "train.jsonl")]
    rng = random.Random(0)
    feats = [
        encode_conversation(tokenizer, Conversation([Message(m["role"], m["content"]) for m in c]), 512)
        for c in rng.sample(chats, 8 * args.batches)
    ]
    mib = 2**20
    print(f"RSS before the first step: {C.rss_bytes() / mib:.0f} MiB; rows per pass: {args.rows_per_pass or 'all'}")
    for i in range(args.batches):
        batch = pack_batch(feats[8 * i : 8 * i + 8], tokenizer.pad_token_id, 512)
        started, after_forward, largest = time.perf_counter(), 0.0, collections.Counter()
        for part in row_chunks(batch, args.rows_per_pass or None):
            saved: collections.Counter = collections.Counter()  # bytes autograd keeps for this pass, by shape
            seen: set = set()

            def keep(t, saved=saved, seen=seen):
                if t.untyped_storage().data_ptr() not in seen:
                    seen.add(t.untyped_storage().data_ptr())
                    saved[tuple(t.shape)] += t.untyped_storage().nbytes()
                return t

            with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
                loss, _ = causal_lm_loss(model, part)
            after_forward = max(after_forward, C.rss_bytes() / mib)
            loss.backward()
            largest = max(largest, saved, key=lambda c: sum(c.values()))
        model.zero_grad(set_to_none=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"batch {i}: rows {tuple(batch['input_ids'].shape)}  "
            f"saved for backward (largest pass) {sum(largest.values()) / mib:.0f} MiB  "
            f"RSS after forward {after_forward:.0f}  after backward {C.rss_bytes() / mib:.0f}  peak {peak:.0f} MiB  "
            f"{time.perf_counter() - started:.2f} s"
        )
        print(
            "  largest saved tensors (MiB): "
            + ", ".join(f"{shape}: {size / mib:.0f}" for shape, size in largest.most_common(4))
        )


if __name__ == "__main__":
    main()
