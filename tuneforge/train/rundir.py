"""The run directory contract: config.yaml, manifest.json (lineage), metrics.jsonl."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import resource
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import tuneforge
from tuneforge.config import RunConfig

if TYPE_CHECKING:
    from tuneforge.train.progress import Event


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def weights_hash(folder: str) -> str | None:
    """One hash over a model folder's weight files (None for a hub id not in the local cache)."""
    path = Path(folder)
    if not path.is_dir():
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(folder, local_files_only=True))
        except Exception:  # not cached locally: the manifest says so instead of guessing
            return None
    files = sorted(list(path.glob("*.safetensors")) + list(path.glob("*.bin")))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest() if files else None


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_memory() -> dict[str, int]:
    out = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if torch.cuda.is_available():
        out["cuda_peak_bytes"] = torch.cuda.max_memory_allocated()
    return out


class RunDir:
    def __init__(self, root: Path):
        self.root = root
        self.checkpoints = root / "checkpoints"
        self.manifest_path = root / "manifest.json"
        self.metrics_path = root / "metrics.jsonl"

    def prepare(self, cfg: RunConfig, resume: bool) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        (self.root / "config.yaml").write_text(_with_absolute_paths(cfg).to_yaml())
        if not resume and self.metrics_path.exists():
            self.metrics_path.unlink()

    def log(self, record: dict[str, Any]) -> None:
        with self.metrics_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")

    def read_events(self) -> list[Event]:
        """The run's typed events, oldest first: the one reader of metrics.jsonl ([] before any)."""
        from tuneforge.train.progress import event_from_record  # progress imports this module

        if not self.metrics_path.exists():
            return []
        lines = self.metrics_path.read_text(encoding="utf-8").splitlines()
        return [event_from_record(json.loads(line)) for line in lines if line.strip()]

    def copy_metrics(self, dest: Path) -> None:
        """metrics.jsonl as written, copied to `dest` (pretraining keeps it beside the model)."""
        shutil.copy(self.metrics_path, dest)

    def read_manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest_path.read_text()) if self.manifest_path.exists() else {}

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        os.replace(tmp, self.manifest_path)


def _with_absolute_paths(cfg: RunConfig) -> RunConfig:
    """The config as saved in the run: data paths absolute, so the run folder stands on its own."""
    data = {
        k: Path(v).resolve()
        for k, v in (("train", cfg.data.train), ("validation", cfg.data.validation), ("test", cfg.data.test))
        if v is not None
    }
    model = (
        cfg.model.model_copy(update={"name": str(Path(cfg.model.name).resolve())})
        if Path(cfg.model.name).exists()
        else cfg.model
    )
    return cfg.model_copy(
        update={"data": cfg.data.model_copy(update=data), "model": model, "output_dir": Path(cfg.output_dir).resolve()}
    )


def new_manifest(cfg: RunConfig, base_path: str, datasets: dict[str, Any]) -> dict[str, Any]:
    return {
        "tuneforge_version": tuneforge.__version__,
        "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seed": cfg.train.seed,
        "objective": cfg.objective,
        "method": cfg.method.model_dump(mode="json"),
        "base_model": {"name": cfg.model.name, "resolved": base_path, "weights_sha256": weights_hash(base_path)},
        "datasets": datasets,
        "hardware": hardware(),
    }
