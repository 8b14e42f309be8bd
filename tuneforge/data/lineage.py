"""Content hashes of data files and prepared datasets, for run manifests (lineage).

`dataset_fingerprint(path)` is what a training run records about each data file: its
hash and size and, when the file belongs to a prepared dataset (`tuneforge data prepare`),
the prepared manifest's output hash, which in turn names the raw inputs and every step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tuneforge.data.sources import list_files

MANIFEST_KIND = "tuneforge.prepared_dataset"


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def combined_hash(named_hashes: dict[str, str]) -> str:
    """One hash over several files: sha256 of sorted `name sha256` lines."""
    text = "".join(f"{name} {sha}\n" for name, sha in sorted(named_hashes.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def find_prepared_manifest(path: Path) -> Path | None:
    """The manifest of the prepared dataset `path` is (a folder) or lies in (a split file)."""
    candidate = (path if path.is_dir() else path.parent) / "manifest.json"
    if not candidate.is_file():
        return None
    try:
        manifest = json.loads(candidate.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return candidate if isinstance(manifest, dict) and manifest.get("kind") == MANIFEST_KIND else None


def dataset_fingerprint(path: str | Path) -> dict[str, Any]:
    """Hash, size and prepared-dataset lineage of a data file or folder (or dataset_info.json#names)."""
    from tuneforge.data import dataset_info

    described = dataset_info.match(path)
    if described is not None:  # the description and the files it names
        info, names = described
        files = [info] + [f for d in dataset_info.load(info, names) for f in list_files(d.file)]
        hashes = {str(f.relative_to(info.parent)): file_sha256(f) for f in files}
        size = sum(f.stat().st_size for f in files)
        return {
            "path": f"{str(path).replace(str(info), str(info.resolve()), 1)}",
            "sha256": combined_hash(hashes),
            "bytes": size,
            "files": len(files),
        }
    path = Path(path)
    files = list_files(path)
    hashes = {str(f.relative_to(path)) if path.is_dir() else f.name: file_sha256(f) for f in files}
    out: dict[str, Any] = {
        "path": str(path.resolve()),
        "sha256": next(iter(hashes.values())) if path.is_file() else combined_hash(hashes),
        "bytes": sum(f.stat().st_size for f in files),
        "files": len(files),
    }
    manifest_path = find_prepared_manifest(path)
    if manifest_path is not None:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        prepared: dict[str, Any] = {
            "manifest": str(manifest_path.resolve()),
            "output_hash": manifest.get("output_hash"),
        }
        recorded = manifest.get("outputs", {}).get(path.name)
        if path.is_file() and recorded:
            prepared["split"] = path.stem
            prepared["unchanged"] = recorded.get("sha256") == out["sha256"]  # False: edited after prepare
        out["prepared"] = prepared
    return out
