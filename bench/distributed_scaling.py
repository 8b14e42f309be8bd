"""Scaling on this CPU: 2 ranks x 1 thread (torchrun, gloo) vs 1 process x 2 threads, and FSDP2 memory.

    .venv/bin/python bench/distributed_scaling.py            # 2 repeats, 12 steps each
    .venv/bin/python bench/distributed_scaling.py --quick    # 1 repeat, 4 steps

Same model (Llama from `_common.build_assets`, hidden 256, 4 layers), same generated chats of mixed
lengths, the same global batch of 8 examples per step (2 ranks x 4, or 1 process x 8), so the same
losses; every configuration runs through the CLI (`tuneforge train [--nproc-per-node 2]`) in a fresh
process tree:

  lora_1x2   LoRA, one process, 2 torch threads
  lora_2x1   LoRA, DDP over 2 ranks, 1 thread each
  full_1x2   full fine-tuning, one process, 2 threads
  full_2x1   full fine-tuning, FSDP2 over 2 ranks, 1 thread each (weights, gradients, AdamW state sharded)

Reported: supervised tokens/s of the training loop (manifest result.tokens_per_s) and the peak RSS of
each rank (manifest memory.per_rank). What a 2-core machine can show: both set-ups use the same two
cores, so tokens/s measures the cost of the gloo all-reduces and the per-rank Python overhead, not a
speed-up (that needs more cores or devices than one process can use); FSDP2 memory per rank falls by
about half of the parameter, gradient and optimizer bytes, while each rank keeps its own interpreter,
torch and activations. Other users of the machine make single figures noisy: configurations are
interleaved and the table shows medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CONFIGS = {
    "lora_1x2": dict(method="lora", ranks=1, threads=2),
    "lora_2x1": dict(method="lora", ranks=2, threads=1),
    "full_1x2": dict(method="full", ranks=1, threads=2),
    "full_2x1": dict(method="full", ranks=2, threads=1),
}


def write_config(work: Path, name: str, method: str, ranks: int, steps: int) -> Path:
    import yaml

    cfg = {
        "objective": "sft",
        "output_dir": str(work / "runs" / name),
        "model": {"name": str(work / "model"), "max_length": 512},
        "data": {"train": str(work / "train.jsonl"), "validation_fraction": 0.0},
        "method": {"name": "lora", "r": 16, "alpha": 32} if method == "lora" else {"name": "full"},
        "train": {
            "max_steps": steps,
            "batch_size": 8 // ranks,
            "lr": 1e-4,
            "warmup_ratio": 0.0,
            "log_every": 1,
            "save_every": 10_000,
            "eval_every": 10_000,
            "seed": 0,
        },
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_one(work: Path, name: str, steps: int) -> dict:
    spec = CONFIGS[name]
    config = write_config(work, name, spec["method"], spec["ranks"], steps)
    out = work / "runs" / name
    subprocess.run(["rm", "-rf", str(out)], check=True)
    cmd = [sys.executable, "-m", "tuneforge", "train", str(config), "--quiet"]
    if spec["ranks"] > 1:
        cmd += ["--nproc-per-node", str(spec["ranks"])]
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "PYTHONPATH": str(C.ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=C.ROOT, timeout=3600)
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-3000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    memory = manifest["memory"]
    per_rank = [m["peak_rss_bytes"] for m in memory.get("per_rank", [memory])]
    records = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
    losses = [e["loss"] for e in records if e["type"] == "train"]
    return {
        "tokens_per_s": manifest["result"]["tokens_per_s"],
        "peak_rss_mib": [b / 2**20 for b in per_rank],
        "losses": losses,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path, default=C.ROOT / "bench" / "out" / "distributed")
    args = parser.parse_args()
    steps, repeats = (4, 1) if args.quick else (12, 2)
    meta = C.build_assets(args.work, n_chats=128, hidden=256, layers=4, heads=4)
    print(f"model: {meta['params'] / 1e6:.1f}M parameters; {steps} steps of 8 examples; {repeats} repeat(s)")
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # rotate the order every repeat
            results[name].append(run_one(args.work, name, steps))
            print(f"  {name}: {results[name][-1]['tokens_per_s']:.0f} tok/s", flush=True)
    print(f"\n{'config':10} {'tok/s (median)':>15} {'peak RSS per rank (MiB)':>26}  same losses as 1 process")
    for name, runs in results.items():
        tps = statistics.median(x["tokens_per_s"] for x in runs)
        rss = " / ".join(f"{v:.0f}" for v in runs[-1]["peak_rss_mib"])
        ref = results[name.replace("2x1", "1x2")][-1]["losses"]
        drift = max(abs(a - b) for a, b in zip(runs[-1]["losses"], ref))
        print(f"{name:10} {tps:15.0f} {rss:>26}  max |diff| {drift:.1e}")
    (args.work / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
