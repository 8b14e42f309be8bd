"""/v1/fine_tuning/jobs: create, list, retrieve, cancel, pause, resume, events, checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, Request

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, Problem
from tuneforge.serve import catalog, files, job_states, jobs
from tuneforge.serve import jobspec_rft as rft
from tuneforge.serve.api.deps import Services, principal, services
from tuneforge.serve.api.errors import APIError, from_tuneforge, not_found
from tuneforge.serve.job_states import JobStatus
from tuneforge.serve.jobspec import (
    CreateJob,
    build_config,
    check_integrations,
    check_method,
    method_name,
    resolve_hyperparameters,
)
from tuneforge.serve.keys import Principal
from tuneforge.serve.runner import fine_tuned_name
from tuneforge.serve.tables import Job

router = APIRouter(prefix="/v1/fine_tuning/jobs")


def job_object(job: Job, store=None) -> dict[str, Any]:
    """OpenAI's fine-tuning job. `paused` is tuneforge's extension (OpenAI's API has no pause): strict clients
    that know only OpenAI's statuses see it in `status`; `tuneforge.openai_status` maps it to `queued`
    (a paused job waits, like a queued one, and goes back to queued when resumed)."""
    method = dict(job.method)
    kind = job.method["type"]  # the resolved hyperparameters, beside the rest of the detail (a reinforcement grader)
    method[kind] = {**(job.method.get(kind) or {}), "hyperparameters": _openai_hyper(job.hyperparameters)}
    return {
        "object": "fine_tuning.job",
        "id": job.id,
        "model": job.model,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "fine_tuned_model": job.fine_tuned_model,
        "organization_id": job.project_id,
        "result_files": job.result_files,
        "status": job.status,
        "validation_file": job.validation_file,
        "training_file": job.training_file,
        "hyperparameters": _openai_hyper(job.hyperparameters),
        "trained_tokens": job.trained_tokens,
        "error": job.error,
        "user_provided_suffix": job.suffix,
        "seed": job.seed,
        "estimated_finish": estimated_finish(store, job) if store is not None else None,
        "integrations": [],
        "metadata": job.user_metadata,
        "method": method,
        "tuneforge": {
            "options": job.options,
            "learning_rate": job.hyperparameters.get("learning_rate"),
            "attempts": job.attempts,
            "worker_id": job.worker_id,
            "openai_status": JobStatus.QUEUED.value if job.status == JobStatus.PAUSED else job.status,
        },
    }


def estimated_finish(store, job: Job) -> int | None:
    """While running: the time the job's last step should end, extrapolated from the steps this attempt
    has logged (their times and the run's total_steps); None before two steps are logged."""
    if job.status != JobStatus.RUNNING:
        return None
    rows, _ = jobs.list_events(store, job.id, None, 200)
    steps = [(e.created_at, e.data) for e in rows if e.type == "metrics" and (e.data or {}).get("total_steps")]
    steps = [(t, d) for t, d in steps if "train_loss" in d]
    if len(steps) < 2:
        return None
    (t_last, last), (t_first, first) = steps[0], steps[-1]  # newest first
    done = last["step"] - first["step"]
    if done <= 0:
        return None
    # event times have whole-second resolution: steps logged within one second took under a second
    per_step = max(t_last - t_first, 1) / done
    return int(t_last + per_step * max(0, last["total_steps"] - last["step"]))


def _openai_hyper(h: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in h.items() if k != "learning_rate"}


def _page(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": more}


def require_base_model(svc: Services, model: str) -> None:
    """A 400 naming `model` unless this server can fine-tune it (jobs and the console's estimate)."""
    if model not in catalog.base_models(svc.settings):
        raise APIError(
            400,
            f"Model {model} is not available for fine-tuning; use one of {catalog.base_models(svc.settings)}.",
            param="model",
            code="model_not_available",
        )


@router.post("")
def create(
    body: CreateJob, background: BackgroundTasks, who: Principal = Depends(principal), svc: Services = Depends(services)
) -> dict:
    require_base_model(svc, body.model)
    train_file = files.get_file(svc.store, who.project_id, body.training_file, param="training_file")
    val_file = (
        files.get_file(svc.store, who.project_id, body.validation_file, param="validation_file")
        if body.validation_file
        else None
    )
    method = body.resolved_method()
    if method.type == "reinforcement":  # objective grpo with the request's grader: jobspec_rft.py
        problems = rft.check_reinforcement(method.reinforcement, body.hyperparameters is not None, val_file is not None)
    else:
        problems = check_method(method, top_level=body.hyperparameters is not None)
    if problems:
        raise from_tuneforge(
            ConfigError("unsupported hyperparameters", problems),
            param=problems[0].where,
            code="invalid_hyperparameters",
        )
    if problems := check_integrations(body.integrations):
        raise from_tuneforge(
            ConfigError("unsupported integrations", problems), param=problems[0].where, code="invalid_integrations"
        )
    options = body.tuneforge or {}
    if problems := check_remote_options(options, svc.settings.allow_unsafe_job_options):
        error = ConfigError("invalid tuneforge options", problems)
        raise from_tuneforge(error, param=problems[0].where, code="invalid_options")
    n_examples = (train_file.validation or {}).get("valid", 0)
    if train_file.purpose == "fine-tune" and n_examples < MIN_TRAINING_EXAMPLES:  # a validation file may be smaller
        raise APIError(
            400,
            f"Training file {train_file.id} has {n_examples} example(s); a training file needs at least "
            f"{MIN_TRAINING_EXAMPLES} (a validation file may have fewer).",
            param="training_file",
            code="invalid_training_file",
        )
    hyper = resolve_hyperparameters(
        getattr(method, method.type).hyperparameters, n_examples, method_name(options), method.type
    )
    try:  # reinforcement: the grader and its settings become tuneforge.objective/grpo; files must fit the method
        hyper, options = rft.job_options(
            method, hyper, options, train_file, val_file, svc.settings.allow_unsafe_job_options
        )
    except ConfigError as exc:
        raise from_tuneforge(exc, param=exc.problems[0].where, code=rft.error_code(exc)) from None
    seed = body.seed if body.seed is not None else 42
    try:  # the whole run config is checked now, so a bad option is a 400 and not a failed job
        build_config(
            base_model=catalog.base_model_path(body.model),
            train_path=Path(train_file.path),
            validation_path=Path(val_file.path) if val_file else None,
            output_dir=svc.settings.runs_dir / "check",
            method_type=method.type,
            hyper=hyper,
            seed=seed,
            options=options,
        )
    except ConfigError as exc:
        raise from_tuneforge(exc, param="tuneforge", code="invalid_options") from None
    job = jobs.create_job(
        svc.store,
        project_id=who.project_id,
        model=body.model,
        training_file=train_file.id,
        validation_file=val_file.id if val_file else None,
        hyperparameters=hyper,
        method=method.model_dump(exclude_none=True),
        options=options,
        suffix=body.suffix,
        seed=seed,
        user_metadata=body.metadata,
    )
    background.add_task(validate_job_files, svc, job.id)
    return job_object(job, svc.store)


MIN_TRAINING_EXAMPLES = 10  # OpenAI's minimum
SECTIONS = ("model", "method", "train", "eval")  # the parts of a run config a job may set


def check_remote_options(options: dict[str, Any], allow_unsafe: bool) -> list[Problem]:
    """What a remote caller may not put in `tuneforge`: a section that is not an object, and (unless the
    operator allows it) anything that runs code or reads the server's files."""
    problems = [
        Problem(
            f"tuneforge.{k}",
            f"must be an object (a partial `{k}:` section), got {type(v).__name__}",
            f'e.g. "{k}": {{...}}',
        )
        for k, v in options.items()
        if k in SECTIONS and not isinstance(v, dict)
    ]
    if problems or allow_unsafe:
        return problems
    from tuneforge.models.chat_templates import BUILTIN

    unsafe = "is refused from the API: it runs code or reads the server's files"
    fix = "remove it, or ask the operator to set TUNEFORGE_ALLOW_UNSAFE_JOB_OPTIONS=1"
    model, evals = options.get("model") or {}, options.get("eval") or {}
    if model.get("trust_remote_code"):
        problems.append(Problem("tuneforge.model.trust_remote_code", unsafe, fix))
    if (options.get("train") or {}).get("mlflow_tracking_uri") is not None:  # another host, or a server file
        problems.append(Problem("tuneforge.train.mlflow_tracking_uri", unsafe, fix))
    if evals.get("custom_metric") is not None:
        problems.append(Problem("tuneforge.eval.custom_metric", unsafe, fix))
    if model.get("chat_template") is not None and model["chat_template"] not in BUILTIN:
        problems.append(
            Problem(
                "tuneforge.model.chat_template",
                f"a template file {unsafe}",
                f"use a built-in name ({', '.join(BUILTIN)}), or {fix}",
            )
        )
    for section in ("model", "train", "eval"):
        fields = RunConfig.model_fields[section].annotation.model_fields
        for key, value in (options.get(section) or {}).items():
            if key in fields and value is not None and "Path" in str(fields[key].annotation):
                problems.append(Problem(f"tuneforge.{section}.{key}", f"a server path {unsafe}", fix))
    return problems


def validate_job_files(svc: Services, job_id: str) -> None:
    """validating_files -> queued, or failed naming the file (runs after the response)."""
    with svc.store.session() as s:
        job = s.get(Job, job_id)
    want_pairs = job.method["type"] == "dpo"
    for param, file_id in (("training_file", job.training_file), ("validation_file", job.validation_file)):
        if file_id is None:
            continue
        jobs.add_event(svc.store, job_id, f"Validating {param.replace('_', ' ')}: {file_id}")
        row = files.get_file(svc.store, job.project_id, file_id)
        fmt = (row.validation or {}).get("format")
        if row.purpose != "fine-tune" or (fmt == "preference") != want_pairs:
            need = (
                "preference pairs (prompt/chosen/rejected)"
                if want_pairs
                else "conversations or prompt/completion records"
            )
            message = f"{param} {file_id} holds {fmt or row.purpose} data; method '{job.method['type']}' needs {need}."
            job_states.files_rejected(svc.store, job_id, param, message)
            return
    job_states.files_validated(svc.store, job_id)


def _job(svc: Services, who: Principal, job_id: str) -> Job:
    job = jobs.get_job(svc.store, job_id, who.project_id)
    if job is None:
        raise not_found("fine-tuning job", job_id)
    return job


@router.get("")
def list_jobs(
    request: Request,
    after: str | None = None,
    limit: int = 20,
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> dict:
    metadata = {
        k[len("metadata[") : -1]: v
        for k, v in request.query_params.items()
        if k.startswith("metadata[") and k.endswith("]")
    }
    rows, more = jobs.list_jobs(svc.store, who.project_id, after, max(1, min(limit, 100)), metadata)
    return _page([job_object(j, svc.store) for j in rows], more)


@router.get("/{job_id}")
def retrieve(job_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    return job_object(_job(svc, who, job_id), svc.store)


@router.post("/{job_id}/cancel")
def cancel(job_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    job = _job(svc, who, job_id)
    if not job_states.cancel(svc.store, job_id):
        raise APIError(
            400,
            f"Job {job_id} has already completed with status {job.status}.",
            param="job_id",
            code="job_already_completed",
        )
    return job_object(_job(svc, who, job_id), svc.store)


@router.post("/{job_id}/pause")
def pause(job_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    job = _job(svc, who, job_id)
    if job.status == JobStatus.RUNNING:
        jobs.request_control(svc.store, job_id, "pause")  # the worker acknowledges by moving it to paused
        jobs.add_event(
            svc.store, job_id, "Pause requested; the job stops after its current step and saves a checkpoint"
        )
    elif not job_states.hold(svc.store, job_id) and job.status != JobStatus.PAUSED:
        raise APIError(
            400, f"Job {job_id} cannot be paused: its status is {job.status}.", param="job_id", code="invalid_state"
        )
    return job_object(_job(svc, who, job_id), svc.store)


@router.post("/{job_id}/resume")
def resume(job_id: str, who: Principal = Depends(principal), svc: Services = Depends(services)) -> dict:
    job = _job(svc, who, job_id)
    if not job_states.resume(svc.store, job_id):
        raise APIError(
            400, f"Job {job_id} cannot be resumed: its status is {job.status}.", param="job_id", code="invalid_state"
        )
    return job_object(_job(svc, who, job_id), svc.store)


@router.get("/{job_id}/events")
def events(
    job_id: str,
    after: str | None = None,
    limit: int = 20,
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> dict:
    _job(svc, who, job_id)
    rows, more = jobs.list_events(svc.store, job_id, after, max(1, min(limit, 1000)))
    return _page(
        [
            {
                "object": "fine_tuning.job.event",
                "id": f"ftevent-{e.seq}",
                "created_at": e.created_at,
                "level": e.level,
                "message": e.message,
                "data": e.data or {},  # OpenAI's event data is an object, never null
                "type": e.type,
            }
            for e in rows
        ],
        more,
    )


@router.get("/{job_id}/checkpoints")
def checkpoints(
    job_id: str,
    after: str | None = None,
    limit: int = 10,
    who: Principal = Depends(principal),
    svc: Services = Depends(services),
) -> dict:
    job = _job(svc, who, job_id)
    rows, more = jobs.list_checkpoints(svc.store, job_id, after, max(1, min(limit, 100)))
    name = job.fine_tuned_model or fine_tuned_name(job, who.project_name)
    data = [
        {
            "object": "fine_tuning.job.checkpoint",
            "id": c.id,
            "created_at": c.created_at,
            "fine_tuned_model_checkpoint": f"{name}:ckpt-step-{c.step}",
            "step_number": c.step,
            "metrics": c.metrics,
            "fine_tuning_job_id": job_id,
        }
        for c in rows
    ]
    out = _page(data, more)
    if data:  # optional in OpenAI's list: left out, never null, on an empty page
        out.update(first_id=data[0]["id"], last_id=data[-1]["id"])
    return out
