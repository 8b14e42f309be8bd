"""The fine-tuning recipe, top to bottom: setup -> train -> save.

Any method (how parameters adapt) runs with any objective (what is learned). Shared pieces
(optimizer, batching, checkpoints, run directory, events) live in their own modules.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from tuneforge.config import RunConfig
from tuneforge.data import length
from tuneforge.data.lineage import dataset_fingerprint
from tuneforge.data.readers import read_examples
from tuneforge.data.retrieval_mix import mix_for_training
from tuneforge.errors import ConfigError, Problem, TrainingError
from tuneforge.export.model_card import write_model_card
from tuneforge.methods import get_method, trainable_parameters
from tuneforge.methods.estimate import estimate_for_model
from tuneforge.methods.registry import artifact_folders
from tuneforge.models.chat_templates import fit_embeddings, set_prompt_policy
from tuneforge.models.loading import (
    load_model,
    load_tokenizer,
    pick_attn_implementation,
    pick_device,
    resolve_model_path,
)
from tuneforge.objectives import objective_for
from tuneforge.train import compile as layer_compile
from tuneforge.train import distributed, utilisation
from tuneforge.train.batching import BatchLayout, batch_layout, micro_batches, rank_shard, row_chunks, steps_per_epoch
from tuneforge.train.checkpoint import (
    LoopState,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
    trainable_state,
)
from tuneforge.train.distributed import Dist
from tuneforge.train.optim import build_optimizer, build_scheduler
from tuneforge.train.precision import Precision, resolve_precision
from tuneforge.train.progress import CheckpointSaved, EvalDone, EventFn, Events, Finished, TrainStep
from tuneforge.train.rundir import RunDir, new_manifest, peak_memory
from tuneforge.train.trackers import open_trackers


class RunStatus(str, Enum):
    """How a run ended; the values are the strings callers and manifest.json have always seen."""

    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"  # validation stopped improving; the best weights are saved
    STOPPED = "stopped"  # asked to stop (should_stop); a checkpoint is saved, resumable
    FAILED = "failed"  # the loss became non-finite

    def __str__(self) -> str:  # the value in f-strings on every Python (3.12 formats mixed-in enums by name)
        return self.value


@dataclass
class TrainResult:
    run_dir: Path
    status: RunStatus
    steps: int
    trained_tokens: int
    final_metrics: dict[str, Any]
    losses: list[float] = field(default_factory=list)  # per optimizer step, this process only


@dataclass
class Session:
    """Everything one run trains with, built once by `_setup`; the loop mutates `state`, `losses`, `best_weights`."""

    cfg: RunConfig
    run: RunDir
    device: torch.device
    objective: Any
    tokenizer: Any
    method: Any
    model: torch.nn.Module
    layout: BatchLayout
    train_feats: list
    val_feats: list
    pad_id: int
    optimizer: torch.optim.Optimizer
    scheduler: Any
    state: LoopState
    total_steps: int
    trainable: int
    total: int
    started: float  # perf_counter at the start of train()
    setup_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    overlength: dict[str, Any] = field(default_factory=dict)  # train examples over model.max_length (data.overlength)
    best_weights: dict[str, torch.Tensor] | None = None  # kept when early stopping may need them
    dist: Dist = field(default_factory=Dist)  # this process's rank in a torchrun job (Dist(): one process)
    wrapped: torch.nn.Module | None = None  # the DDP / FSDP2 module training forwards go through, None in one process
    precision: Precision = field(default_factory=Precision.fp32)  # train.precision resolved: autocast, master weights
    scaler: torch.amp.GradScaler | None = None  # fp16 only: the loss scale that keeps small gradients from underflowing
    meter: utilisation.Meter | None = None  # real tokens, attention work and batch-building time vs the matmul peak
    prior_threads: int = 0  # torch's intra-op threads before train.threads, restored when the run ends
    compiled: layer_compile.CompilePlan = field(default_factory=layer_compile.CompilePlan.off)  # train.compile

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return self.wrapped(batch) if self.wrapped is not None else self.objective.loss(self.model, batch)

    @property
    def eval_objective(self) -> Any:
        return distributed.eval_objective(self.objective, self.wrapped, self.dist)


@dataclass(frozen=True)
class ValidationOutcome:
    val_loss: float
    improved: bool
    should_stop: bool  # early stopping: no improvement in train.early_stopping_patience evaluations


def train(
    cfg: RunConfig,
    *,
    resume: bool = False,
    on_event: EventFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train `cfg` into the run directory `cfg.output_dir` and save its artifact.

    `resume` continues from the last checkpoint; `on_event` receives every typed event;
    `should_stop` is asked before each step (stopping saves a checkpoint: RunStatus.STOPPED, resumable).
    """
    # ---- setup: data, model, method, optimizer, run directory
    started = time.perf_counter()
    d = distributed.init(cfg, pick_device(cfg.train.device))  # Dist() unless launched by torchrun
    run = distributed.run_dir(Path(cfg.output_dir), d)  # only rank 0 writes it
    resume = resume or (distributed.restarted() and latest_checkpoint(run.checkpoints) is not None)
    checkpoint = _checkpoint_to_resume(run, resume)
    s = _setup(cfg, run, checkpoint, resume, started, d)
    state, every = s.state, cfg.train
    status = RunStatus.COMPLETED
    # ---- train: step, log, validate, checkpoint
    trackers = open_trackers(cfg, run) if d.is_main else []  # train.report_to: TensorBoard, MLflow
    with Events(run, on_event, s.total_steps, progress and d.is_main, trackers) as events:
        _announce(s, events, checkpoint)
        loop_start, tokens_at_start = time.perf_counter(), state.tokens
        while state.step < s.total_steps:
            if should_stop and distributed.agree(should_stop(), d, s.device):  # rank 0 decides for all
                status = RunStatus.STOPPED
                break
            step_loss = _optimizer_step(s)
            elapsed = max(time.perf_counter() - loop_start, 1e-9)
            tps = (state.tokens - tokens_at_start) / elapsed
            events.advance(state.step, step_loss, tps, s.meter.share(elapsed) if s.meter else None)
            if _due(state.step, every.log_every, s.total_steps):
                lr = s.scheduler.get_last_lr()[0]
                extra = s.objective.step_metrics() if hasattr(s.objective, "step_metrics") else {}  # grpo: rewards
                events.emit(TrainStep(state.step, state.epoch, step_loss, lr, state.tokens, tps, extra))
            if s.val_feats and _due(state.step, every.eval_every, s.total_steps) and _validate(s, events).should_stop:
                status = RunStatus.EARLY_STOPPED
            if _due(state.step, every.save_every, s.total_steps) or status is not RunStatus.COMPLETED:
                _save_checkpoint(s, events)
            if status is not RunStatus.COMPLETED:
                break
        if status is RunStatus.STOPPED:
            _save_checkpoint(s, events)
            events.message(f"stopped at step {state.step}; resume with --resume")
        train_s = time.perf_counter() - loop_start
        # ---- save: best weights, final validation, artifact, manifest
        final = _final_result(s, status, events, (state.tokens - tokens_at_start) / max(train_s, 1e-9))
    _finish(s, status, final, train_s=train_s)
    return TrainResult(run.root, status, state.step, state.tokens, final, s.losses)


def _setup(cfg: RunConfig, run: RunDir, checkpoint: Path | None, resume: bool, started: float, d: Dist) -> Session:
    """Data, model, method, optimizer and schedule (from the checkpoint when resuming); then the run directory."""
    device = distributed.rank_device(pick_device(cfg.train.device), d)
    prior_threads = torch.get_num_threads()
    threads, why_threads = (
        utilisation.thread_count(cfg.train.threads) if device.type == "cpu" else (prior_threads, "not a CPU run")
    )
    torch.set_num_threads(threads)
    set_seed(cfg.train.seed)
    objective = objective_for(cfg)
    tokenizer = load_tokenizer(cfg.model.name, cfg.model.chat_template)
    set_prompt_policy(tokenizer, cfg.data.system_prompt)  # saved with the tokenizer: inference prompts the same way
    train_examples, val_examples = _load_splits(cfg)
    # data.retrieval (RAFT passages in the prompts) and data.replay (general examples against forgetting)
    train_examples, val_examples, mixing = mix_for_training(cfg, train_examples, val_examples, tokenizer)
    objective.prepare(train_examples)  # fixes the label set of labelled objectives from the training data
    train_feats = objective.encode(train_examples, tokenizer, cfg.model.max_length)
    val_feats = objective.encode(val_examples, tokenizer, cfg.model.max_length) if val_examples else []
    # data.overlength: truncate (said loudly), drop or error - before any heavy work
    train_feats, over = length.enforce(train_examples, train_feats, cfg.model.max_length, cfg.data.overlength)
    val_feats, _ = length.enforce(val_examples, val_feats, cfg.model.max_length, cfg.data.overlength, "validation")
    if cfg.train.epochs == "auto":  # OpenAI's rule; config.yaml records the number used
        cfg.train.epochs = length.resolve_epochs("auto", len(train_feats))
    pad_id = tokenizer.pad_token_id

    base_path = resolve_model_path(cfg.model.name)
    method = get_method(cfg.method.name)
    # trained base weights stay fp32 under bf16/fp16 autocast; a frozen base (adapters) may be 16-bit
    prec = resolve_precision(cfg.train.precision, cfg.model.dtype, device, trains_base=not method.fp32_adapters)
    model = load_model(
        base_path,
        prec.weights,
        cfg.model.revision,
        cfg.model.trust_remote_code,
        task=objective.task,
        attn_implementation=pick_attn_implementation(cfg.model.attn_implementation, device, prec.compute),
        attn_required=cfg.model.attn_implementation != "auto",
        **objective.model_kwargs(train_examples),
        **method.load_kwargs(cfg.method),
    )
    fit_embeddings(model, tokenizer)  # rows for the special tokens a model.chat_template added
    torch.manual_seed(cfg.train.seed)  # adapter initialisation is part of the seeded run
    model = method.apply(model, cfg.method).to(device)
    layout = batch_layout(cfg, model, objective, pad_id, device)
    if cfg.train.gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA) without extra hooks
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = trainable_parameters(model)
    d, wrapped = distributed.wrap(model, objective, cfg, d, trainable / total)  # before the optimizer: FSDP2 shards

    per_epoch = steps_per_epoch(len(train_feats), cfg.train.batch_size * d.world, cfg.train.grad_accum)
    total_steps = cfg.train.max_steps or max(1, math.ceil(per_epoch * cfg.train.epochs))
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.train.scheduler, total_steps, cfg.train.warmup_ratio)
    state = load_checkpoint(checkpoint, model, optimizer, scheduler) if checkpoint else LoopState()
    state.global_batch = _global_batch(cfg, d, state)
    s = Session(
        cfg,
        run,
        device,
        objective,
        tokenizer,
        method,
        model,
        layout,
        train_feats,
        val_feats,
        pad_id,
        optimizer,
        scheduler,
        state,
        total_steps,
        trainable,
        total,
        started,
        dist=d,
        wrapped=wrapped,
        precision=prec,
        scaler=prec.scaler(),
        meter=utilisation.Meter(
            utilisation.model_work(model),
            utilisation.matmul_peak(device) if d.is_main else None,
            threads,
            why_threads,
            cfg.objective,
        ),
        prior_threads=prior_threads,
    )
    # train.compile: decoder layers compiled in place (after the method and DDP wrapping; auto estimates the run)
    lengths = layer_compile.example_lengths(train_feats)
    per_step = cfg.train.batch_size * cfg.train.grad_accum * d.world  # examples per optimizer step, all ranks
    run_s = layer_compile.estimate_run_seconds(s.meter.work, s.meter.peak, lengths, total_steps, per_step)
    s.compiled = layer_compile.prepare(cfg.train.compile, model, device, d.strategy if d.active else None, run_s)

    dropped = {"dropped": over.places} if cfg.data.overlength == "drop" else {}
    s.overlength = over.to_dict(cfg.data.overlength) | dropped
    run.prepare(cfg, resume)
    lineage = _dataset_lineage(cfg, train_examples, val_examples) | mixing
    _write_start_manifest(s, resume, new_manifest(cfg, base_path, lineage), per_epoch)
    distributed.barrier(d)  # the run directory exists before any rank writes a checkpoint shard into it
    s.setup_s = time.perf_counter() - started
    return s


def _global_batch(cfg: RunConfig, d: Dist, state: LoopState) -> int:
    """Examples per micro-batch over all ranks; a resumed run must keep it (its position counts such batches)."""
    size = cfg.train.batch_size * d.world
    if state.global_batch not in (None, size):
        per_rank = state.global_batch / d.world
        raise ConfigError(
            f"the checkpoint was trained with {state.global_batch} examples per micro-batch over all "
            f"ranks, this run has {size} ({d.world} x train.batch_size={cfg.train.batch_size})",
            [
                Problem(
                    "train.batch_size",
                    "resuming with another global batch would replay other examples",
                    f"set train.batch_size={per_rank:g} for {d.world} rank(s)"
                    if per_rank.is_integer()
                    else "resume with a world size that divides it",
                )
            ],
        )
    return size


def _write_start_manifest(s: Session, resume: bool, fresh: dict[str, Any], per_epoch: int) -> None:
    """manifest.json as the run starts: lineage (kept from the first start when resuming), layout, params, sizes."""
    cfg, layout = s.cfg, s.layout
    manifest = s.run.read_manifest() if resume else {}
    manifest.update(fresh if not manifest else {"status": "running"})
    manifest["batch_layout"] = {"packing": layout.packing, "rows_per_pass": layout.rows_per_pass, "why": layout.why}
    manifest["params"] = {"trainable": s.trainable, "total": s.total, "trainable_share": s.trainable / s.total}
    manifest["distributed"] = {"world_size": s.dist.world, "strategy": s.dist.strategy}
    manifest["precision"] = s.precision.describe()
    manifest["attn_implementation"] = getattr(s.model.config, "_attn_implementation", None)  # the kernel that ran
    manifest["compile"] = s.compiled.describe()
    # the estimate before the run; the measured peak is written beside it when the run ends (`memory`)
    # (activations of one forward/backward pass: packed rows per pass, else the padded micro-batch)
    rows = (layout.rows_per_pass or cfg.train.batch_size) if layout.packing else cfg.train.batch_size
    manifest["memory_estimate"] = estimate_for_model(
        s.model,
        cfg.method,
        min(rows, cfg.train.batch_size),
        cfg.model.max_length,
        precision=s.precision.name,
        gradient_checkpointing=cfg.train.gradient_checkpointing,
    ).memory_bytes
    manifest["data_stats"] = {
        "train_features": len(s.train_feats),
        "validation_features": len(s.val_feats),
        "truncated": sum(f.truncated for f in s.train_feats),
        "overlength": s.overlength,
        "steps_per_epoch": per_epoch,
        "total_steps": s.total_steps,
    }
    s.run.write_manifest(manifest)


def _announce(s: Session, events: Events, checkpoint: Path | None) -> None:
    if checkpoint:
        events.message(f"resumed from {checkpoint.name} at step {s.state.step}")
    events.message(f"batches: {s.layout.describe()}")
    share = 100 * s.trainable / s.total
    events.message(f"{s.cfg.method.name}: {s.trainable:,} of {s.total:,} parameters trainable ({share:.2f}%)")
    if s.precision.compute is not None or s.precision.warning():  # fp32 runs (CPU's default) print nothing new
        events.message(s.precision.warning() or s.precision.summary())
    if s.compiled.enabled or s.compiled.warning:
        events.message(s.compiled.summary(), "warning" if s.compiled.warning else "info")


def _due(step: int, every: int, total_steps: int) -> bool:
    return step % every == 0 or step == total_steps


def _optimizer_step(s: Session) -> float:
    """One optimizer step over `grad_accum` micro-batches; returns its loss per supervised token."""
    cfg, state = s.cfg, s.state
    s.model.train()
    loss_sum, n_tokens = distributed.global_sums(*_accumulate(s), s.dist, s.device)  # the global step's sums
    if not math.isfinite(loss_sum):
        last = latest_checkpoint(s.run.checkpoints)
        _finish(s, RunStatus.FAILED, {"error": f"non-finite loss at step {state.step + 1}"})
        raise TrainingError(
            f"training stopped: the loss became {loss_sum} at step {state.step + 1}",
            [
                Problem(
                    "train.lr",
                    f"last good checkpoint: {last or 'none yet'}",
                    "lower train.lr or enable train.max_grad_norm, then resume",
                )
            ],
        )
    params = s.params
    if s.scaler is not None:  # fp16: true gradients before dividing and clipping; inf/nan are noted for step()
        s.scaler.unscale_(s.optimizer)
    for p in params:  # mean over every supervised token of the step, however it was split (micro-batches, ranks)
        if p.grad is not None:
            p.grad.div_(max(n_tokens, 1))
    if cfg.train.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
    if s.scaler is not None:  # skips the update when a gradient overflowed, then adapts the scale
        s.scaler.step(s.optimizer)
        s.scaler.update()
    else:
        s.optimizer.step()
    s.scheduler.step()
    s.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.tokens += n_tokens
    if s.meter:
        s.meter.supervised += n_tokens
    step_loss = loss_sum / max(n_tokens, 1)
    s.losses.append(step_loss)
    return step_loss


def _validate(s: Session, events: Events) -> ValidationOutcome:
    """Validation loss and metrics; tracks the best loss (and weights, when early stopping may restore them)."""
    train_cfg, state = s.cfg.train, s.state
    with s.precision.autocast(), s.compiled.eager():  # validated as it trains; eagerly (no extra graph)
        val_loss = evaluate_loss(s.model, s.eval_objective, s.val_feats, train_cfg.batch_size, s.pad_id, s.device)
    improved = val_loss < state.best_val_loss
    state.best_val_loss = min(state.best_val_loss, val_loss)
    state.evals_without_improvement = 0 if improved else state.evals_without_improvement + 1
    patience = train_cfg.early_stopping_patience
    if improved and patience:
        s.best_weights = trainable_state(s.model)
    with s.precision.autocast(), s.compiled.eager():
        metrics = s.objective.metrics(s.model, s.val_feats, train_cfg.batch_size, s.pad_id, s.device)
    events.emit(EvalDone(state.step, val_loss, state.best_val_loss, metrics))
    should_stop = distributed.agree(bool(patience) and state.evals_without_improvement >= patience, s.dist, s.device)
    if should_stop:
        events.message(
            f"early stopping at step {state.step}: no improvement in {state.evals_without_improvement} evaluations"
        )
    return ValidationOutcome(val_loss, improved, should_stop)


def _save_checkpoint(s: Session, events: Events) -> None:
    save = save_checkpoint if not s.dist.active else partial(save_sharded_checkpoint, is_main=s.dist.is_main)
    path = save(s.run.checkpoints, s.model, s.optimizer, s.scheduler, s.state, s.cfg.train.keep_checkpoints)
    events.emit(CheckpointSaved(s.state.step, str(path)))


def _final_result(s: Session, status: RunStatus, events: Events, tokens_per_s: float) -> dict[str, Any]:
    """The result dict; unless stopped, with the best weights restored, final validation and the saved artifact."""
    state = s.state
    final: dict[str, Any] = {
        "steps": state.step,
        "trained_tokens": state.tokens,
        "train_loss": s.losses[-1] if s.losses else None,
        "tokens_per_s": tokens_per_s,
    }
    if status is RunStatus.STOPPED:
        return final
    if s.best_weights is not None:  # early stopping keeps the best validated weights, not the last
        _load_trainable(s.model, s.best_weights)
    if s.val_feats:
        batch_size = s.cfg.train.batch_size
        with s.precision.autocast(), s.compiled.eager():
            final["val_loss"] = evaluate_loss(s.model, s.eval_objective, s.val_feats, batch_size, s.pad_id, s.device)
            final.update(s.objective.metrics(s.model, s.val_feats, batch_size, s.pad_id, s.device))
    artifact = s.run.root / s.method.folder
    with distributed.full_weights(s.model, s.dist):  # FSDP2: every rank gathers the weights rank 0 writes
        if s.dist.is_main:
            artifact = s.method.save(s.model, s.run.root)
            s.tokenizer.save_pretrained(artifact)
            write_model_card(s.run.root, artifact, final)  # README.md: what the folder is, from what, how good
    distributed.barrier(s.dist)
    final["artifact"] = str(artifact)
    events.emit(Finished(final))
    return final


def _accumulate(s: Session) -> tuple[float, int]:
    """Forward/backward this rank's share of the step's `grad_accum` micro-batches; returns (summed loss, tokens).

    Gradients hold the *sum* over tokens (over every rank's tokens once the step's last backward reduced them);
    the caller divides by the step's token count.
    """
    built = time.perf_counter()
    parts = _step_parts(s)
    if s.meter:
        s.meter.data_s += time.perf_counter() - built
    loss_total, n_total = 0.0, 0
    for i, (part, weight) in enumerate(parts):
        if s.meter and weight:
            s.meter.add(part, s.pad_id)
        with distributed.gradient_sync(s.wrapped, sync=i == len(parts) - 1):  # one reduction per step
            with s.precision.autocast():  # forward in bf16/fp16; backward follows the forward's dtypes
                loss, n = s.loss({k: v.to(s.device) for k, v in part.items()})
            scaled = loss * weight
            (s.scaler.scale(scaled) if s.scaler is not None else scaled).backward()
        loss_total += loss.item() * weight
        n_total += n * weight
    return loss_total, n_total


def _step_parts(s: Session) -> list[tuple[dict[str, torch.Tensor], int]]:
    """(batch, weight 1) for each forward/backward of this rank's share of the next optimizer step.

    A rank whose shards are all empty (a last micro-batch of fewer examples than ranks) still joins the
    gradient reduction, with one example at weight 0.
    """
    cfg, state, feats, d = s.cfg, s.state, s.train_feats, s.dist
    size = cfg.train.batch_size * d.world  # the micro-batch of one process with train.batch_size * world
    parts, taken = [], []
    for _ in range(cfg.train.grad_accum):
        batches = micro_batches(len(feats), size, cfg.train.seed, state.epoch)
        if state.micro_batch >= len(batches):
            state.epoch, state.micro_batch = state.epoch + 1, 0
            if taken:  # an optimizer step never spans two epochs
                break
            batches = micro_batches(len(feats), size, cfg.train.seed, state.epoch)
        taken = batches[state.micro_batch]
        state.micro_batch += 1
        chosen = [feats[i] for i in rank_shard(taken, d.rank, d.world)]
        if not chosen:
            continue
        if s.layout.packing:  # the same examples in another layout: the same summed loss and gradient
            packed = s.objective.pack(chosen, s.pad_id, cfg.model.max_length)
            parts += [(part, 1) for part in row_chunks(packed, s.layout.rows_per_pass)]
        else:
            parts.append((s.objective.collate(chosen, s.pad_id), 1))
    return parts or [(s.objective.collate([feats[taken[0]]], s.pad_id), 0)]


@torch.no_grad()
def evaluate_loss(model, objective, feats, batch_size: int, pad_id: int, device) -> float:
    """Mean loss per supervised token over `feats`."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(feats), batch_size):
        batch = objective.collate(feats[i : i + batch_size], pad_id)
        loss, n = objective.loss(model, {k: v.to(device) for k, v in batch.items()})
        total, count = total + loss.item(), count + n
    return total / max(count, 1)


def _checkpoint_to_resume(run: RunDir, resume: bool) -> Path | None:
    """The checkpoint to resume from; refuses to resume nothing, or to start over an earlier run's checkpoints or
    artifact (any method's artifact folder, from the registry)."""
    if resume:
        found = latest_checkpoint(run.checkpoints)
        if found is None:
            raise ConfigError(
                f"nothing to resume in {run.root}",
                [Problem("output_dir", "no checkpoint found", "run without --resume to start fresh")],
            )
        return found
    if latest_checkpoint(run.checkpoints) or any((run.root / folder).exists() for folder in artifact_folders()):
        raise ConfigError(
            f"run directory {run.root} already holds a run",
            [
                Problem(
                    "output_dir",
                    "would overwrite an earlier run",
                    "pass --resume to continue it, or choose another output_dir",
                )
            ],
        )
    return None


def _load_splits(cfg: RunConfig) -> tuple[list, list]:
    train_examples = read_examples(cfg.data.train, cfg.data.format, cfg.data.mapping)
    if cfg.data.validation is not None:
        return train_examples, read_examples(cfg.data.validation, cfg.data.format, cfg.data.mapping)
    if cfg.data.validation_fraction == 0:
        return train_examples, []
    n_val = max(1, int(len(train_examples) * cfg.data.validation_fraction))
    g = torch.Generator().manual_seed(cfg.train.seed)
    order = torch.randperm(len(train_examples), generator=g).tolist()
    return [train_examples[i] for i in order[n_val:]], [train_examples[i] for i in order[:n_val]]


def _dataset_lineage(cfg: RunConfig, train_examples: list, val_examples: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    splits = (
        ("train", cfg.data.train, len(train_examples)),
        ("validation", cfg.data.validation, len(val_examples)),
        ("test", cfg.data.test, None),
    )
    for key, path, n in splits:
        if path is not None:
            out[key] = {**dataset_fingerprint(path), "examples": n}  # points at a prepared dataset's manifest too
    return out


def _load_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def _finish(s: Session, status: RunStatus, result: dict[str, Any], train_s: float | None = None) -> None:
    manifest = s.run.read_manifest()
    timings = {
        "setup_s": round(s.setup_s, 3),
        "train_s": round(train_s or 0.0, 3),
        "total_s": round(time.perf_counter() - s.started, 3),
    }
    memory = peak_memory()
    per_rank = distributed.peak_memory_per_rank(memory, s.dist)  # a collective: every rank finishes
    if s.meter and train_s:  # how close the run came to the machine's matmul peak, and what held it back
        manifest["utilisation"] = s.meter.report(train_s)
    manifest["compile"] = s.compiled.describe(with_seconds=True)  # with the seconds spent compiling
    s.compiled.finish()
    torch.set_num_threads(s.prior_threads or torch.get_num_threads())
    manifest.update(
        {
            "status": status.value,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "result": result,
            "memory": memory if per_rank is None else {**memory, "per_rank": per_rank},
            "timings": timings,
        }
    )
    s.run.write_manifest(manifest)
