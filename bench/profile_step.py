"""Where a tuneforge training step spends its time: torch.profiler over a few micro-batches.

    .venv/bin/python bench/profile_step.py                 # LoRA, packed (one row per pass, as tuneforge runs this model on CPU), 3 micro-batches
    .venv/bin/python bench/profile_step.py --no-packing --method full

Uses the model and data of bench/train_throughput.py and the recipe's own collate/loss.
Prints the top operators by self CPU time and the share of time in matrix multiplies.
"""  # noqa: E501 (kept as is: it is the --help text)

from __future__ import annotations

import argparse
import json
import random
import sys
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
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=C.TARGET_MODULES))
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


if __name__ == "__main__":
    main()
