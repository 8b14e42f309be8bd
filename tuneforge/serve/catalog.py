"""Which models a project may use: base models and its own fine-tuned models."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from tuneforge.config import tuneforge_home
from tuneforge.serve.db import Store
from tuneforge.serve.settings import ServeSettings
from tuneforge.serve.tables import FineTunedModel

BASE_CREATED = 1767225600  # 2026-01-01: base models have no creation time of their own
EMBEDDING_MODEL = "minilm"  # the embedded all-MiniLM-L6-v2 encoder, for /v1/embeddings only


@dataclass(frozen=True)
class ModelRef:
    id: str
    base: str  # the base model name (itself for a base model)
    kind: str  # base | adapter | model
    path: str | None  # adapter or HF folder of a fine-tuned model
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
        refs += [_ft_ref(r, project_id) for r in rows]
    return refs


def find_model(store: Store, settings: ServeSettings, project_id: str, model_id: str) -> ModelRef | None:
    if model_id == EMBEDDING_MODEL:
        return ModelRef(model_id, model_id, "embedding", None, "tuneforge", BASE_CREATED)
    if model_id in base_models(settings):
        return ModelRef(model_id, model_id, "base", None, "tuneforge", BASE_CREATED)
    with store.session() as s:
        row = s.get(FineTunedModel, model_id)
    return (
        _ft_ref(row, project_id)
        if row is not None and row.project_id == project_id and Path(row.path).exists()
        else None
    )


def delete_model(store: Store, model_id: str) -> None:
    with store.session() as s:
        s.delete(s.get(FineTunedModel, model_id))


def _ft_ref(row: FineTunedModel, project_id: str) -> ModelRef:
    return ModelRef(row.id, row.base_model, row.kind, row.path, project_id, row.created_at)
