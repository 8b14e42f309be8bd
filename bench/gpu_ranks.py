"""The GPU check's multi-GPU section (issue 16): a short 2-rank run over NCCL per strategy (DDP with LoRA,
FSDP2 with full fine-tuning) on a tiny Llama, launched as users launch it (`tuneforge train --nproc-per-node 2`),
and its losses compared with the same run in one process (global batch kept). Needs 2 CUDA devices; with fewer
it says so and exits 0 (today's lent machine has one GPU).

    python bench/gpu_ranks.py [--out DIR]
    python bench/gpu_ranks.py --dry-run   # the same on CPU (gloo), to check the script itself
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _losses(run_dir: Path) -> list[float]:
    from tuneforge.train.progress import TrainStep
    from tuneforge.train.rundir import RunDir

    return [e.loss for e in RunDir(run_dir).read_events() if isinstance(e, TrainStep)]


def _run(cfg_path: Path, nproc: int) -> None:
    cmd = [sys.executable, "-m", "tuneforge", "train", str(cfg_path)]
    if nproc > 1:
        cmd += ["--nproc-per-node", str(nproc)]
    subprocess.run(cmd, check=True, timeout=240)


def main() -> int:
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="run on CPU with gloo whatever the devices")
    args = parser.parse_args()
    gpus = torch.cuda.device_count()
    if gpus < 2 and not args.dry_run:
        print(f"{gpus} CUDA device(s): the 2-rank NCCL section needs 2, skipped")
        return 0
    from helpers import install_tiny_demo, make_config, write_chat_jsonl
    from tuneforge.config import FullMethod

    work = Path(tempfile.mkdtemp(prefix="gpu-ranks-"))
    install_tiny_demo(work)
    data = {name: work / f"{name}.jsonl" for name in ("train", "validation", "test")}
    for i, path in enumerate(data.values()):
        write_chat_jsonl(path, 64, seed=i)
    figures = {}
    for strategy, method in (("ddp", None), ("fsdp", FullMethod())):
        runs = {}
        for nproc, batch in ((1, 8), (2, 4)):
            out = work / f"{strategy}-{nproc}"
            cfg = make_config(work / "models" / "demo", data, out, method=method, batch_size=batch)
            cfg.train.distributed.strategy = strategy
            cfg_path = work / f"{strategy}-{nproc}.yaml"
            cfg_path.write_text(cfg.to_yaml())
            _run(cfg_path, nproc)
            runs[nproc] = _losses(out)
        diff = max(abs(a - b) for a, b in zip(runs[1], runs[2], strict=True))
        figures[strategy] = {"losses_1": runs[1], "losses_2": runs[2], "max_abs_diff": diff}
        backend = "gloo, CPU" if args.dry_run else "NCCL"
        print(f"{strategy}: 2 ranks ({backend}) vs 1 process, max |loss difference| {diff:.2e}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_ranks.json").write_text(json.dumps(figures, indent=2))
    return 0 if all(f["max_abs_diff"] < 1e-3 for f in figures.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
