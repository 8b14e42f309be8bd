"""train.fused_loss on vs off: step time and peak memory of the LM head's loss for 32k and 128k vocabularies.

    .venv/bin/python bench/fused_loss.py             # CPU: 2-layer hidden-64 Llama, batch 4 x 512, 3-6 min
    .venv/bin/python bench/fused_loss.py --device cuda   # GPU: 2-layer hidden-896 (Qwen2.5-0.5B width), batch
                                                     # 8 x 1024, bf16 autocast, vocab 32k and 151,936
    .venv/bin/python bench/fused_loss.py --quick     # CPU, batch 1 x 128, 1 run each: the code path (dry run)

The model is a randomly initialised Llama built with `from_config` (tied embeddings, fp32 weights), deep enough
to be a real forward but so shallow that the LM head and its loss dominate the step: what is measured is what
`train.fused_loss` changes. Every position is supervised (clm, the largest logits; assistant-only sft selects
fewer). One step = forward + backward of `causal_lm_loss` with every parameter trained (the tied head's weight
gradient is part of the fused pass), no optimizer. Each (vocab, mode) runs in its own fresh process: the
gradient buffers are allocated first, then `--warmup` untimed steps (default 0 on CPU, where every large
buffer is a fresh mmap each step anyway; gpu_check.sh warms CUDA up once) and `--steps` timed steps (default
1, median), repeated `--repeats` times in rotated order (bench/_common.py); figures are medians over repeats.
Memory: CPU peak RSS of the process and "step MB", the peak minus the RSS before the first step (model,
gradient buffers, batch and imports excluded); CUDA: torch.cuda.max_memory_allocated and its rise over the memory
allocated before the first step. Figures go to $OUT/fused_loss.json when --out is given.

Measured (CPU, 2 cores shared with other jobs at load 4-5, 3 runs x 2 steps after 1 warm-up, medians):
vocab 32k: step time on/off 0.99x, step memory 756 -> 387 MB (0.51x); vocab 128k: 0.95x, 3031 -> 446 MB (0.15x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SHAPES = {  # profile: (hidden, heads, batch, length, vocabularies)
    "cpu": (64, 4, 4, 512, (32_000, 128_256)),
    "cuda": (896, 14, 8, 1024, (32_000, 151_936)),
    "quick": (64, 4, 1, 128, (4_096, 32_000)),
}


def worker(config: str, profile: str, steps: int, warmup: int, threads: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tuneforge.objectives.base import causal_lm_loss

    vocab, mode = config.split("_")
    device = "cuda" if profile == "cuda" else "cpu"
    hidden, heads, batch, length, _ = SHAPES[profile]
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = dict(hidden_size=hidden, intermediate_size=4 * hidden, num_attention_heads=heads, num_key_value_heads=2)
    cfg = LlamaConfig(**shape, num_hidden_layers=2, vocab_size=int(vocab), tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).to(device).train()
    ids = torch.randint(0, int(vocab), (batch, length), device=device)
    data = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids}
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=device == "cuda")

    def step() -> tuple[float, float]:
        model.zero_grad(set_to_none=False)  # keeps the buffers allocated below
        t = time.perf_counter()
        with autocast:
            loss, n = causal_lm_loss(model, data, mode)
        (loss / n).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return float(loss / n), time.perf_counter() - t

    for p in model.parameters():  # the gradient buffers count in the baseline, not in the step
        p.grad = torch.zeros_like(p)
    for _ in range(warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = C.rss_bytes()
    loss, times = zip(*(step() for _ in range(steps)))
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else C.peak_rss_bytes()
    return {
        "step_s": statistics.median(times),
        "peak_mb": peak / 2**20,
        "step_mb": (peak - base) / 2**20,
        "loss": loss[0],
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--quick", action="store_true", help="CPU, batch 1 x 128, one run of one step per configuration")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=1, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=0, help="untimed steps before them")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", type=Path, help="folder for fused_loss.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--profile", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(
            "RESULT " + json.dumps(worker(args.worker, args.profile, args.steps, args.warmup, args.threads)), flush=True
        )
        return {}
    profile = "quick" if args.quick else args.device
    if args.quick:
        args.repeats, args.steps, args.warmup = 1, 1, 0
    vocabs = SHAPES[profile][-1]
    configs = [f"{v}_{mode}" for v in vocabs for mode in ("off", "on")]
    work = Path("/tmp/tuneforge-bench-fused-loss")
    work.mkdir(parents=True, exist_ok=True)
    passed = [
        "--profile",
        profile,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--threads",
        str(args.threads),
    ]
    raw, _ = C.interleaved(Path(__file__), configs, args.repeats, passed, args.threads, work / "raw.json")
    med = {c: {k: C.median([r[k] for r in runs]) for k in runs[0]} for c, runs in raw.items()}
    rows, ratios = [], {}
    for v in vocabs:
        off, on = med[f"{v}_off"], med[f"{v}_on"]
        for mode, m in (("off", off), ("on", on)):
            noise = C.spread([r["step_s"] for r in raw[f"{v}_{mode}"]])
            rows.append(
                [
                    v,
                    mode,
                    f"{m['step_s']:.3f} {noise}",
                    f"{m['peak_mb']:.0f}",
                    f"{m['step_mb']:.0f}",
                    f"{m['loss']:.5f}",
                ]
            )
        ratios[v] = {
            "time_on_over_off": on["step_s"] / off["step_s"],
            "step_mb_on_over_off": on["step_mb"] / off["step_mb"],
        }
    hidden, _, batch, length, _ = SHAPES[profile]
    C.print_table(
        f"fused_loss on vs off ({profile}, 2-layer hidden-{hidden} Llama, batch {batch} x {length}, "
        f"medians of {args.repeats} runs x {args.steps} steps after {args.warmup})",
        ["vocab", "fused", "step s", "peak MB", "step MB", "loss"],
        rows,
    )
    for v, r in ratios.items():
        print(
            f"vocab {v}: step time on/off {r['time_on_over_off']:.2f}x, "
            f"step memory on/off {r['step_mb_on_over_off']:.2f}x"
        )
    report = {"profile": profile, "shape": SHAPES[profile][:4], "medians": med, "ratios": ratios, "raw": raw}
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "fused_loss.json").write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
