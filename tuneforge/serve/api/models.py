"""/v1/models: base and fine-tuned models; retrieve; delete a fine-tuned model."""

from __future__ import annotations

import re

from fastapi import APIRouter, Depends

from tuneforge.serve import catalog
from tuneforge.serve.api.deps import Services, principal, services
from tuneforge.serve.api.errors import APIError, declared
from tuneforge.serve.catalog import ModelRef
from tuneforge.serve.keys import Principal

router = APIRouter(prefix="/v1/models")


def model_object(ref: ModelRef) -> dict:
    return {
        "id": ref.id,
        "object": "model",
        "created": ref.created,
        "owned_by": ref.owned_by,
        "tuneforge": {"base_model": ref.base, "kind": ref.kind},
    }


CHECKPOINT = re.compile(r"^(ft:.+):ckpt-step-(\d+)$")


def require_model(svc: Services, who: Principal, model_id: str) -> ModelRef:
    ref = catalog.find_model(svc.store, svc.settings, who.project_id, model_id)
    checkpoint = CHECKPOINT.match(model_id) if ref is None else None
    if checkpoint and catalog.find_model(svc.store, svc.settings, who.project_id, checkpoint[1]) is not None:
        # A job's checkpoints hold training state (trainable weights, optimizer), not a model folder to serve.
        raise APIError(
            400,
            f"'{model_id}' is a training checkpoint; tuneforge serves a job's final model only: use "
            f"'{checkpoint[1]}', or train with a smaller tuneforge.train.max_steps to serve an earlier state.",
            param="model",
            code="checkpoint_not_served",
        )
    if ref is None:
        raise APIError(
            404,
            f"The model '{model_id}' does not exist or you do not have access to it.",
            param="model",
            code="model_not_found",
        )
    return ref


@router.get("")
def list_models(who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    return {
        "object": "list",
        "data": [model_object(r) for r in catalog.list_models(svc.store, svc.settings, who.project_id)],
    }


@router.get("/{model_id:path}")
def retrieve(model_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    return model_object(require_model(svc, who, model_id))


@router.delete("/{model_id:path}", responses=declared(403))
def delete(model_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    ref = require_model(svc, who, model_id)
    if ref.kind in ("base", "embedding"):
        raise APIError(
            403,
            f"You cannot delete the base model '{model_id}'; only fine-tuned models can be deleted.",
            param="model",
            code="model_not_deletable",
        )
    catalog.delete_model(svc.store, model_id)
    svc.engine.forget(model_id)
    return {"id": model_id, "object": "model", "deleted": True}
