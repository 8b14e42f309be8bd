"""/v1/tuneforge/...: what the web console shows that the OpenAI-shaped routes do not carry.

Every route is authenticated and project-scoped like the rest of /v1 (the console has no other
way in): the methods and their fields, a training-memory estimate before a job is submitted, a
stored file's token statistics and cost, a fine-tune's eval report and its download as a zip,
and the request log as a time series per model. (Feedback review and export are `/v1/feedback` routes.)
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy import select

from tuneforge.errors import TuneforgeError
from tuneforge.serve import catalog, files
from tuneforge.serve.api.deps import Services, principal, services
from tuneforge.serve.api.errors import APIError, from_tuneforge
from tuneforge.serve.api.jobs import require_base_model
from tuneforge.serve.api.models import require_model
from tuneforge.serve.keys import Principal
from tuneforge.serve.tables import FineTunedModel, Job, RequestLog

router = APIRouter(prefix="/v1/tuneforge")


def _field_kind(schema: dict[str, Any]) -> dict[str, Any]:
    """A form input for one JSON-schema property: int, float, bool, choice (enum), list (comma text) or text."""
    options = schema.get("anyOf") or [schema]
    types = {o.get("type") for o in options}
    enums = [v for o in options for v in o.get("enum", ([o["const"]] if "const" in o else []))]
    if "array" in types:
        return {"kind": "list", "also": enums}  # e.g. target_modules: a list or 'all-linear'
    if enums:
        return {"kind": "choice", "choices": enums}
    for kind in ("boolean", "integer", "number"):
        if kind in types:
            return {"kind": {"boolean": "bool", "integer": "int", "number": "float"}[kind]}
    return {"kind": "text"}


@router.get("/methods")
def list_methods(who: Principal = Depends(principal)) -> dict:
    """Each method's name and the fields of its `method:` section, as the config schema defines them."""
    from tuneforge.methods.registry import DEFAULT_METHOD, methods

    data = []
    for m in methods():
        schema = m.config.model_json_schema()
        required = set(schema.get("required", []))
        fields = [
            {
                "name": name,
                "help": prop.get("description", ""),
                "default": prop.get("default"),
                "required": name in required,
                **_field_kind(prop),
            }
            for name, prop in schema.get("properties", {}).items()
            if name != "name"
        ]
        data.append({"name": m.name, "fields": fields, "default": m.name == DEFAULT_METHOD})
    return {"object": "list", "data": data}


class EstimateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    method: dict[str, Any] = Field(default_factory=lambda: {"name": "lora"}, description="A `method:` section.")
    batch_size: int = Field(1, ge=1, le=4096)
    seq_len: int = Field(512, ge=1, le=1_000_000)
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


def method_section(method: dict[str, Any]):
    """The typed method config; each problem is named as the job request's key (tuneforge.method.FIELD)."""
    from tuneforge.config import MethodSection

    try:
        return TypeAdapter(MethodSection).validate_python(method)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(p) for p in first["loc"][1:]] or ["name"]
        message = "; ".join(
            f"tuneforge.method.{'.'.join(str(p) for p in e['loc'][1:]) or 'name'}: "
            + ("not an option of this method" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()
        )
        raise APIError(400, message, param="tuneforge.method." + loc[0], code="invalid_method") from None


@router.post("/estimate")
async def estimate(body: EstimateIn, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    """`tuneforge estimate` for a base model of this server x a method: parameters and training memory."""
    from tuneforge.methods.estimate import estimate as run_estimate

    require_base_model(svc, body.model)
    cfg = method_section(body.method)
    try:
        result = await run_in_threadpool(
            run_estimate, catalog.base_model_path(body.model), cfg, body.batch_size, body.seq_len, dtype=body.dtype
        )
    except TuneforgeError as exc:
        raise from_tuneforge(exc, param="tuneforge.method", code="invalid_method") from None
    except ValueError as exc:  # peft: target modules that the model does not have
        raise APIError(400, f"tuneforge.method: {exc}", param="tuneforge.method", code="invalid_method") from None
    return {"object": "estimate", **result.to_dict(), "model": body.model}


@router.get("/files/{file_id}/validation")
def file_validation(file_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    """The validation report stored at upload: format, counts per kind, warnings with line, field and fix."""
    row = files.get_file(svc.store, who.project_id, file_id)
    if row.validation is None:
        raise APIError(404, f"{file_id} has no validation report (a file the service wrote).", param="file_id")
    return {"object": "file.validation", "id": file_id, "filename": row.filename, **row.validation}


@router.get("/files/{file_id}/report")
async def file_report(
    file_id: str, model: str = "demo", who: Principal = Depends(principal), svc: Services = Depends(services)
) -> dict:
    """Token statistics and training cost of a stored file with a base model's tokenizer (`tuneforge data report`)."""
    from tuneforge.data.report import build_report

    row = files.get_file(svc.store, who.project_id, file_id)
    if row.purpose != "fine-tune":
        raise APIError(400, f"{file_id} is a {row.purpose} file, not training data.", param="file_id")
    if model not in catalog.base_models(svc.settings):
        raise APIError(400, f"Model {model} is not a base model of this server.", param="model")
    try:
        report = await run_in_threadpool(
            build_report,
            files.local_copy(svc.settings, row),
            model=catalog.base_model_path(model),
            measure_hardware=False,
        )
    except TuneforgeError as exc:
        raise from_tuneforge(exc, param="file_id") from None
    for key in ("path", "training_file"):  # the server's copy: its path names the project's folder
        report.pop(key, None)
    quoted = json.dumps(str(files.local_copy(svc.settings, row)))[1:-1]
    report = json.loads(json.dumps(report).replace(quoted, json.dumps(row.filename)[1:-1]))
    return {"object": "file.report", "id": file_id, "filename": row.filename, "model": model, **report}


def _fine_tune(svc: Services, who: Principal, model_id: str) -> tuple[FineTunedModel, Job]:
    ref = require_model(svc, who, model_id)
    if ref.kind in ("base", "embedding"):
        raise APIError(400, f"'{model_id}' is a base model; this needs a fine-tuned model.", param="model")
    with svc.store.session() as s:
        row = s.get(FineTunedModel, model_id)
        job = s.get(Job, row.job_id)
    return row, job


@router.get("/models/{model_id:path}/eval_report", response_class=HTMLResponse)
def eval_report(model_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> Response:
    """The run's eval_report.html (written by `tuneforge eval`), served with scripts disabled."""
    _, job = _fine_tune(svc, who, model_id)
    run_dir = catalog.local_run_folder(svc.settings, job.run_dir) if job.run_dir else None
    path = (run_dir or Path("")) / "eval_report.html"
    if run_dir is None or not path.is_file():
        raise APIError(
            404,
            f"'{model_id}' has no eval report yet. Run `tuneforge eval` on its run directory on the server "
            "(it writes eval_report.html there).",
            param="model",
            code="no_eval_report",
        )
    return HTMLResponse(
        path.read_text(encoding="utf-8"), headers={"Content-Security-Policy": "sandbox; default-src 'none'"}
    )


def _zip_folder(folder: Path, prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for p in sorted(folder.rglob("*")):
            if p.is_file() and "checkpoints" not in p.relative_to(folder).parts:
                z.write(p, f"{prefix}/{p.relative_to(folder)}")
    return buf.getvalue()


def _merged_zip(run_dir: Path, prefix: str) -> bytes:
    from tuneforge.models.artifact import read_artifact
    from tuneforge.models.loading import load_for_inference

    if not read_artifact(run_dir).can_merge:
        raise APIError(
            400,
            "This fine-tune's method keeps extra modules or virtual tokens: it cannot be merged into a plain model. "
            "Download the adapter instead.",
            param="form",
            code="not_mergeable",
        )
    out = Path(tempfile.mkdtemp(prefix="tuneforge-merge-"))
    try:
        model, tokenizer = load_for_inference(run_dir, merge=True)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return _zip_folder(out, prefix)
    finally:
        shutil.rmtree(out, ignore_errors=True)


@router.get("/models/{model_id:path}/download")
async def download(
    model_id: str,
    form: Literal["adapter", "merged"] = "adapter",
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> Response:
    """The fine-tune as a zip: its artifact folder as trained (adapter), or folded into the base (merged)."""
    row, job = _fine_tune(svc, who, model_id)
    safe = model_id.replace(":", "_").replace("/", "_")
    if form == "adapter":
        folder = catalog.local_model_folder(svc.settings, row)  # from the shared storage
        data = await run_in_threadpool(_zip_folder, folder, safe)
    else:
        run_dir = catalog.local_run_folder(svc.settings, job.run_dir)
        data = await run_in_threadpool(_merged_zip, run_dir, f"{safe}-merged")
    name = f"{safe}{'-merged' if form == 'merged' else ''}.zip"
    return Response(
        data, media_type="application/zip", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/monitoring/series")
def usage_series(
    bucket_s: int = 60,
    last: int = 60,
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> dict:
    """Requests, mean latency and tokens per model in `bucket_s` buckets over the last `last` buckets."""
    import time

    if not 1 <= bucket_s <= 86400 or not 1 <= last <= 1000:
        raise APIError(400, "bucket_s must be 1-86400 and last 1-1000.", param="bucket_s")
    end = (int(time.time()) // bucket_s + 1) * bucket_s
    start = end - bucket_s * last
    with svc.store.session() as s:
        rows = s.execute(
            select(
                RequestLog.model,
                RequestLog.created_at,
                RequestLog.latency_ms,
                RequestLog.prompt_tokens,
                RequestLog.completion_tokens,
            ).where(RequestLog.project_id == who.project_id, RequestLog.created_at >= start)
        ).all()
    series: dict[str, list[dict[str, Any]]] = {}
    for model, created, latency, prompt, completion in rows:
        buckets = series.setdefault(model, [_bucket(start + i * bucket_s) for i in range(last)])
        b = buckets[min(last - 1, int((created - start) // bucket_s))]
        b["requests"] += 1
        b["latency_ms_sum"] += latency
        b["prompt_tokens"] += prompt
        b["completion_tokens"] += completion
    data = []
    for model in sorted(series):
        for b in series[model]:
            total = b.pop("latency_ms_sum")
            b["mean_latency_ms"] = round(total / b["requests"], 2) if b["requests"] else None
        data.append({"model": model, "buckets": series[model]})
    return {"object": "list", "bucket_s": bucket_s, "start": start, "data": data}


def _bucket(start: int) -> dict[str, Any]:
    return {"start": start, "requests": 0, "latency_ms_sum": 0.0, "prompt_tokens": 0, "completion_tokens": 0}
