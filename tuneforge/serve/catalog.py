"""Which models a project may use: base models and its own fine-tuned models.

A fine-tuned model's row holds its storage key (`runs/<job id>/adapter`); `find_model` answers with a local
folder the engine loads: the stored folder itself on a shared filesystem, a copy in the home's cache
(made once) from a bucket. A model whose files are not in the storage is not found.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from tuneforge.config import tuneforge_home
from tuneforge.serve.db import Store
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.storage import StorageError
from tuneforge.serve.tables import FineTunedModel

BASE_CREATED = 1767225600  # 2026-01-01: base models have no creation time of their own
EMBEDDING_MODEL = "minilm"  # the embedded all-MiniLM-L6-v2 encoder, for /v1/embeddings only


@dataclass(frozen=True)
class ModelRef:
    id: str
    base: str  # the base model name (itself for a base model)
    kind: str  # base | adapter | model
    path: str | None  # a fine-tuned model's adapter or HF folder on this machine (find_model), else None
    owned_by: str
    created: int


def base_models(settings: ServeSettings) -> list[str]:
    """'demo' (built on first use), configured names, and HF folders in $TUNEFORGE_HOME/models."""
    names = ["demo", *settings.base_models]
    models_dir = tuneforge_home() / "models"
    if models_dir.is_dir():
        names += sorted(
            p.name for p in models_dir.iterdir() if (p / "config.json").exists() and p.name not in ("demo", "minilm")
        )
    return list(dict.fromkeys(names))


def base_model_path(name: str) -> str:
    """What the loaders get for a base model id: a folder under $TUNEFORGE_HOME/models or the name."""
    folder = tuneforge_home() / "models" / name
    return str(folder) if name != "demo" and (folder / "config.json").exists() else name


def list_models(store: Store, settings: ServeSettings, project_id: str) -> list[ModelRef]:
    refs = [ModelRef(b, b, "base", None, "tuneforge", BASE_CREATED) for b in base_models(settings)]
    refs.append(ModelRef(EMBEDDING_MODEL, EMBEDDING_MODEL, "embedding", None, "tuneforge", BASE_CREATED))
    with store.session() as s:
        rows = s.scalars(
            select(FineTunedModel).where(FineTunedModel.project_id == project_id).order_by(FineTunedModel.created_at)
        )
        refs += [_ft_ref(r, project_id, None) for r in rows]  # listed by id: nothing fetched
    return refs


def find_model(store: Store, settings: ServeSettings, project_id: str, model_id: str) -> ModelRef | None:
    if model_id == EMBEDDING_MODEL:
        return ModelRef(model_id, model_id, "embedding", None, "tuneforge", BASE_CREATED)
    if model_id in base_models(settings):
        return ModelRef(model_id, model_id, "base", None, "tuneforge", BASE_CREATED)
    with store.session() as s:
        row = s.get(FineTunedModel, model_id)
    if row is None or row.project_id != project_id:
        return None
    folder = local_model_folder(settings, row)
    return _ft_ref(row, project_id, str(folder)) if folder is not None else None


def local_model_folder(settings: ServeSettings, row: FineTunedModel) -> Path | None:
    """The model's folder on this machine, fetched from the storage if need be; None when it is not stored."""
    if row.path.startswith("/"):  # a host path the storage-key migration could not convert: this machine only
        return Path(row.path) if Path(row.path).exists() else None
    exclude = ("checkpoints",)  # a run served as a model of its own needs its artifact, not its training state
    try:
        return settings.storage().local_dir(row.path, settings.cache_dir, exclude=exclude)
    except StorageError:
        return None


def local_run_folder(settings: ServeSettings, key: str) -> Path | None:
    """A run directory (without its checkpoints) on this machine, fetched from the storage; None when absent."""
    if key.startswith("/"):  # a host path the storage-key migration could not convert
        return Path(key) if Path(key).is_dir() else None
    try:
        return settings.storage().local_dir(key, settings.cache_dir, exclude=("checkpoints",))
    except StorageError:
        return None


def delete_model(store: Store, model_id: str) -> None:
    with store.session() as s:
        s.delete(s.get(FineTunedModel, model_id))


def _ft_ref(row: FineTunedModel, project_id: str, folder: str | None) -> ModelRef:
    return ModelRef(row.id, row.base_model, row.kind, folder, project_id, row.created_at)
