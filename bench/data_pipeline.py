"""Benchmark: validate, clean and deduplicate N short chat examples generated on the fly.

    .venv/bin/python bench/data_pipeline.py            # 1,000,000 examples
    .venv/bin/python bench/data_pipeline.py --n 50000  # quicker

Writes a JSONL file of synthetic support-desk chats (with ~2% exact duplicates, ~1%
near-duplicates and ~0.5% broken lines), then times `validate_file` and `prepare`
(clean + exact and MinHash near dedup + split) and reports examples/s per stage and the
process's RSS sampled during the run (peak, and at 25/50/75/100% of the input) to show
whether memory grows with the file.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import tempfile
import threading
import time
from pathlib import Path

from tuneforge.data.prepare import prepare
from tuneforge.data.prepare_config import load_prepare_config
from tuneforge.data.validate import validate_file

PRODUCTS = ["router", "laptop", "printer", "phone", "tablet", "headset", "monitor", "charger"]
ISSUES = [
    "won't turn on",
    "keeps restarting",
    "is slow",
    "shows error {code}",
    "lost its settings",
    "will not connect to wifi",
]
FIXES = [
    "Hold the power button for {s} seconds, then restart it.",
    "Update the firmware from Settings > System, version {v}.",
    "Reset it to factory settings and sign in again.",
    "Replace the cable; order {code} ships within {s} days.",
]


def _chat(rng: random.Random, i: int) -> dict:
    product = rng.choice(PRODUCTS)
    issue = rng.choice(ISSUES).format(code=rng.randrange(1000, 9999))
    fix = rng.choice(FIXES).format(
        s=rng.randrange(2, 30),
        v=f"{rng.randrange(1, 9)}.{rng.randrange(0, 20)}",
        code=f"A{rng.randrange(10**5, 10**6)}",
    )
    return {
        "messages": [
            {"role": "system", "content": "You are the support desk of Acme."},
            {"role": "user", "content": f"Ticket {i}: my {product} {issue}. What should I do?"},
            {"role": "assistant", "content": fix},
        ]
    }


def generate(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    recent: list[dict] = []
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            r = rng.random()
            if r < 0.005:
                fh.write('{"messages": [{"role": "user", "content": "truncated\n')
                continue
            if r < 0.025 and recent:
                row = rng.choice(recent)  # exact duplicate
            elif r < 0.035 and recent:
                row = json.loads(json.dumps(rng.choice(recent)))
                row["messages"][1]["content"] += " Thanks"  # near-duplicate
            else:
                row = _chat(rng, i)
                recent = (recent + [row])[-1000:]
            fh.write(json.dumps(row) + "\n")


class RssSampler:
    """Samples this process's resident memory every 0.2 s in a thread."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.is_set():
            with open("/proc/self/statm") as fh:
                self.samples.append((time.perf_counter(), int(fh.read().split()[1]) * page / 2**20))
            self._stop.wait(0.2)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, start: float, end: float) -> list[float]:
        return [mb for t, mb in self.samples if start <= t <= end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="examples to generate")
    parser.add_argument("--no-near", action="store_true", help="exact dedup only")
    parser.add_argument("--num-perm", type=int, default=128, help="MinHash permutations")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    with tempfile.TemporaryDirectory() as tmp, RssSampler() as rss:
        tmp = Path(tmp)
        src = tmp / "chats.jsonl"
        t0 = time.perf_counter()
        generate(src, args.n)
        file_mb = round(src.stat().st_size / 2**20, 1)
        t1, c1 = time.perf_counter(), time.process_time()
        report = validate_file(src, max_issues=100)
        t2, c2 = time.perf_counter(), time.process_time()
        cfg = load_prepare_config(src, [f"dedup.near={not args.no_near}", f"dedup.num_perm={args.num_perm}"])
        progress_marks: list[tuple[float, int]] = []
        manifest = prepare(
            cfg,
            tmp / "prepared",
            progress=lambda stage, k: progress_marks.append((time.perf_counter(), k)) if stage == "read" else None,
        )
        t3, c3 = time.perf_counter(), time.process_time()
    validate_rss = rss.between(t1, t2)
    prepare_rss = rss.between(t2, t3)
    result = {
        "examples": args.n,
        "file_mb": file_mb,
        "generate_s": round(t1 - t0, 1),
        "validate_s": round(t2 - t1, 1),
        "validate_examples_per_s": round(args.n / (t2 - t1)),
        "prepare_s": round(t3 - t2, 1),
        "prepare_examples_per_s": round(args.n / (t3 - t2)),
        "validate_plus_prepare_s": round(t3 - t1, 1),
        # CPU seconds of this process: what the stages cost on a quiet machine
        # (wall time includes waiting for a shared CPU)
        "validate_cpu_s": round(c2 - c1, 1),
        "prepare_cpu_s": round(c3 - c2, 1),
        "cpu_examples_per_s": round(args.n / (c3 - c1)),
        "load_average": os.getloadavg()[0],
        "validate_errors": dict(report.error_counts),
        "validate_warnings": dict(report.warning_counts),
        "counts": manifest["counts"],
        "exact_removed": manifest["steps"][2]["exact_removed"],
        "near_removed": manifest["steps"][2]["near_removed"],
        "rss_mb_peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_mb_validate": _quartiles(validate_rss),
        "rss_mb_prepare_read": _quartiles(
            [mb for t, mb in rss.samples if progress_marks and t2 <= t <= progress_marks[-1][0]]
        ),
        "rss_mb_prepare_max": round(max(prepare_rss), 1) if prepare_rss else None,
    }
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))


def _quartiles(samples: list[float]) -> list[float]:
    """RSS at 25/50/75/100% of a stage: flat numbers mean memory does not grow with the input."""
    if not samples:
        return []
    return [round(samples[min(len(samples) - 1, int(len(samples) * q))], 1) for q in (0.25, 0.5, 0.75, 1.0)]


if __name__ == "__main__":
    main()
