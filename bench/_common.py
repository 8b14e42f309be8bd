"""Shared pieces of the benchmarks: the generated workload, the model, the interleaved runner
and the summary tables. Not part of the tuneforge package (benchmarks are not tests).

Every measured configuration runs in its own fresh subprocess (so peak memory is per
configuration), and the driver interleaves them: repeat 1 runs A, B, C..., repeat 2 runs
them again in a rotated order, and so on. Contention from other users of the machine then
hits every configuration alike, and the tables report medians with their spread.
"""

from __future__ import annotations

import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


# ---------------------------------------------------------------- workload


def mixed_length_chats(n: int, seed: int) -> list[list[dict]]:
    """Support-desk chats of 1 to 12 turns with answers of varied length (about 60 to 900 tokens).

    One-turn chats dominate, with a long tail, as in real support logs; with batch 8 and
    max length 512 about 40% of a padded batch is padding.
    """
    from tuneforge.data.synthetic import general_corpus, support_desk_dataset

    rng = random.Random(seed)
    turns_pool = support_desk_dataset(2400, seed)
    prose = general_corpus(4000, seed)
    chats = []
    for _ in range(n):
        turns = rng.choices([1, 2, 3, 4, 6, 9, 12], weights=[34, 20, 14, 10, 9, 7, 6])[0]
        messages = [{"role": "system", "content": turns_pool[0].messages[0].content}]
        for _ in range(turns):
            conv = rng.choice(turns_pool)
            answer = conv.messages[2].content
            if rng.random() < 0.35:  # some answers explain at length
                answer += " " + " ".join(rng.choice(prose) for _ in range(rng.randint(1, 4)))
            messages += [
                {"role": "user", "content": conv.messages[1].content},
                {"role": "assistant", "content": answer},
            ]
        chats.append(messages)
    return chats


def build_assets(work: Path, n_chats: int, seed: int = 0, hidden: int = 512, layers: int = 8, heads: int = 8) -> dict:
    """Write (once) the tokenizer + randomly initialised Llama folder, train.jsonl and a held-out set."""
    meta_path = work / "assets.json"
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta["n_chats"] == n_chats and meta["hidden"] == hidden and meta["layers"] == layers:
            return meta
    from tuneforge.models.demo import build_tiny_llama, build_tokenizer, save_model_folder

    work.mkdir(parents=True, exist_ok=True)
    chats = mixed_length_chats(n_chats + 64, seed)
    train, heldout = chats[:n_chats], chats[n_chats:]
    tokenizer = build_tokenizer([m["content"] for c in chats for m in c], vocab_size=2048)
    model = build_tiny_llama(tokenizer, hidden=hidden, layers=layers, heads=heads, max_positions=512, seed=seed)
    save_model_folder(model, tokenizer, work / "model")
    with open(work / "train.jsonl", "w") as f:
        for c in train:
            f.write(json.dumps({"messages": c}) + "\n")
    (work / "heldout.json").write_text(json.dumps(heldout))
    meta = {
        "n_chats": n_chats,
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "params": sum(p.numel() for p in model.parameters()),
        "vocab": len(tokenizer),
    }
    meta_path.write_text(json.dumps(meta))
    return meta


def heldout_loss(model, tokenizer, chats: list[list[dict]], max_length: int = 512) -> float:
    """Mean assistant-token loss on held-out chats, the same evaluator for every configuration."""
    import torch

    from tuneforge.data.tokenize import encode_conversation
    from tuneforge.data.types import Conversation, Message
    from tuneforge.objectives.base import causal_lm_loss, pad_batch

    feats = [
        encode_conversation(tokenizer, Conversation([Message(m["role"], m["content"]) for m in c]), max_length)
        for c in chats
    ]
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(feats), 8):
            loss, n = causal_lm_loss(model, pad_batch(feats[i : i + 8], tokenizer.pad_token_id))
            total, count = total + float(loss), count + n
    return total / count


# ---------------------------------------------------------------- measuring


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def matmul_peak_gflops(threads: int, size: int = 1024, seconds: float = 1.5) -> float:
    """Best fp32 GEMM rate over short bursts (the machine's attainable matmul peak)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            a @ b
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - t) / 1e9)
    return best


def run_worker(script: Path, config: str, args: list[str], timeout: float = 3600) -> dict:
    """Run one configuration in a fresh interpreter; it prints one JSON line starting with RESULT."""
    cmd = [sys.executable, str(script), "--worker", config, *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = "\n".join((proc.stderr or proc.stdout).splitlines()[-25:])
    raise RuntimeError(f"worker {config} failed (exit {proc.returncode}):\n{tail}")


def interleaved(
    script: Path, configs: list[str], repeats: int, args: list[str], peak_threads: int, save: Path
) -> tuple[dict[str, list[dict]], list[float]]:
    """Run every configuration `repeats` times, rotating the order each repeat; results go to `save` as they come."""
    results: dict[str, list[dict]] = {c: [] for c in configs}
    peaks = []
    for r in range(repeats):
        peaks.append(matmul_peak_gflops(peak_threads))
        order = configs[r % len(configs) :] + configs[: r % len(configs)]
        for config in order:
            t = time.perf_counter()
            results[config].append(run_worker(script, config, args))
            save.write_text(json.dumps({"raw": results, "peaks": peaks}))
            print(
                f"  repeat {r + 1}/{repeats} {config:<22} {time.perf_counter() - t:6.1f}s", file=sys.stderr, flush=True
            )
    return results, peaks


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: list[float]) -> str:
    """Relative spread (max-min)/median, the noise figure printed beside each median."""
    if len(values) < 2:
        return "n=1"
    m = statistics.median(values)
    return f"±{100 * (max(values) - min(values)) / (2 * m):.0f}%" if m else "-"


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)))
