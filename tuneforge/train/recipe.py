"""The fine-tuning recipe, top to bottom: setup -> train -> save.

Any method (how parameters adapt) runs with any objective (what is learned). Shared pieces
(optimizer, batching, checkpoints, run directory, events) live in their own modules.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import set_seed

from tuneforge.config import RunConfig
from tuneforge.data.lineage import dataset_fingerprint
from tuneforge.data.readers import read_examples
from tuneforge.errors import ConfigError, Problem, TrainingError
from tuneforge.methods import get_method, trainable_parameters
from tuneforge.methods.estimate import estimate_for_model
from tuneforge.models.loading import load_model, load_tokenizer, pick_device, pick_dtype, resolve_model_path
from tuneforge.objectives import objective_for
from tuneforge.objectives.base import packing_matches_padding
from tuneforge.train.batching import micro_batches, row_chunks, steps_per_epoch
from tuneforge.train.checkpoint import LoopState, latest_checkpoint, load_checkpoint, save_checkpoint, trainable_state
from tuneforge.train.optim import build_optimizer, build_scheduler
from tuneforge.train.progress import EventFn, Events
from tuneforge.train.rundir import RunDir, new_manifest, peak_memory


@dataclass
class TrainResult:
    run_dir: Path
    status: str  # "completed" | "early_stopped" | "stopped" (asked to stop; resumable)
    steps: int
    trained_tokens: int
    final_metrics: dict[str, Any]
    losses: list[float] = field(default_factory=list)  # per optimizer step, this process only


def train(cfg: RunConfig, *, resume: bool = False, on_event: EventFn | None = None,
          should_stop: Callable[[], bool] | None = None, progress: bool = True) -> TrainResult:
    started = time.perf_counter()
    run = RunDir(Path(cfg.output_dir))
    checkpoint = _checkpoint_to_resume(run, resume)

    # ---- setup: data, model, method, optimizer
    device = pick_device(cfg.train.device)
    set_seed(cfg.train.seed)
    objective = objective_for(cfg)
    tokenizer = load_tokenizer(cfg.model.name)
    train_examples, val_examples = _load_splits(cfg)
    objective.prepare(train_examples)  # fixes the label set of labelled objectives from the training data
    train_feats = objective.encode(train_examples, tokenizer, cfg.model.max_length)
    val_feats = objective.encode(val_examples, tokenizer, cfg.model.max_length) if val_examples else []
    pad_id = tokenizer.pad_token_id

    base_path = resolve_model_path(cfg.model.name)
    method = get_method(cfg.method.name)
    model = load_model(base_path, pick_dtype(cfg.model.dtype, device), cfg.model.revision, cfg.model.trust_remote_code,
                       task=objective.task, **objective.model_kwargs(train_examples), **method.load_kwargs(cfg.method))
    torch.manual_seed(cfg.train.seed)  # adapter initialisation is part of the seeded run
    model = method.apply(model, cfg.method).to(device)
    layout = batch_layout(cfg, model, objective, pad_id, device)
    if cfg.train.gradient_checkpointing:  # non-reentrant: works with frozen inputs (LoRA) without extra hooks
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    trainable, total = trainable_parameters(model)

    per_epoch = steps_per_epoch(len(train_feats), cfg.train.batch_size, cfg.train.grad_accum)
    total_steps = cfg.train.max_steps or max(1, math.ceil(per_epoch * cfg.train.epochs))
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.train.scheduler, total_steps, cfg.train.warmup_ratio)
    state = load_checkpoint(checkpoint, model, optimizer, scheduler) if checkpoint else LoopState()

    run.prepare(cfg, resume)
    manifest = run.read_manifest() if resume else {}
    manifest.update(new_manifest(cfg, base_path, _dataset_lineage(cfg, train_examples, val_examples)) if not manifest else {"status": "running"})
    manifest["batch_layout"] = {"packing": layout.packing, "rows_per_pass": layout.rows_per_pass, "why": layout.why}
    manifest["params"] = {"trainable": trainable, "total": total, "trainable_share": trainable / total}
    # the estimate before the run; the measured peak is written beside it when the run ends (`memory`)
    # (activations of one forward/backward pass: packed rows per pass, else the padded micro-batch)
    rows = (layout.rows_per_pass or cfg.train.batch_size) if layout.packing else cfg.train.batch_size
    manifest["memory_estimate"] = estimate_for_model(model, cfg.method, min(rows, cfg.train.batch_size), cfg.model.max_length).memory_bytes
    manifest["data_stats"] = {"train_features": len(train_feats), "validation_features": len(val_feats),
                              "truncated": sum(f.truncated for f in train_feats), "steps_per_epoch": per_epoch, "total_steps": total_steps}
    run.write_manifest(manifest)
    setup_s = time.perf_counter() - started

    # ---- train
    losses: list[float] = []
    best_weights: dict[str, torch.Tensor] | None = None
    status = "completed"
    params = [p for p in model.parameters() if p.requires_grad]
    with Events(run, on_event, total_steps, progress) as events:
        if checkpoint:
            events.message(f"resumed from {checkpoint.name} at step {state.step}")
        events.message(f"batches: {layout.describe()}")
        events.message(f"{cfg.method.name}: {trainable:,} of {total:,} parameters trainable ({100 * trainable / total:.2f}%)")
        loop_start, tokens_at_start = time.perf_counter(), state.tokens
        while state.step < total_steps:
            if should_stop and should_stop():
                status = "stopped"
                break
            model.train()
            loss_sum, n_tokens = _accumulate(model, objective, train_feats, cfg, layout, state, pad_id, device)
            if not math.isfinite(loss_sum):
                last = latest_checkpoint(run.checkpoints)
                _finish(run, "failed", started, setup_s, {"error": f"non-finite loss at step {state.step + 1}"})
                raise TrainingError(f"training stopped: the loss became {loss_sum} at step {state.step + 1}",
                                    [Problem("train.lr", f"last good checkpoint: {last or 'none yet'}", "lower train.lr or enable train.max_grad_norm, then resume")])
            for p in params:  # mean over every supervised token of the step, however it was split into micro-batches
                if p.grad is not None:
                    p.grad.div_(max(n_tokens, 1))
            if cfg.train.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.tokens += n_tokens
            step_loss = loss_sum / max(n_tokens, 1)
            losses.append(step_loss)
            tps = (state.tokens - tokens_at_start) / max(time.perf_counter() - loop_start, 1e-9)
            events.advance(state.step, step_loss, tps)
            if state.step % cfg.train.log_every == 0 or state.step == total_steps:
                events.emit({"type": "train", "step": state.step, "epoch": state.epoch, "loss": step_loss,
                             "lr": scheduler.get_last_lr()[0], "tokens": state.tokens, "tokens_per_s": tps})
            if val_feats and (state.step % cfg.train.eval_every == 0 or state.step == total_steps):
                val_loss = evaluate_loss(model, objective, val_feats, cfg.train.batch_size, pad_id, device)
                improved = val_loss < state.best_val_loss
                state.best_val_loss = min(state.best_val_loss, val_loss)
                state.evals_without_improvement = 0 if improved else state.evals_without_improvement + 1
                if improved and cfg.train.early_stopping_patience:
                    best_weights = trainable_state(model)
                events.emit({"type": "eval", "step": state.step, "val_loss": val_loss, "best_val_loss": state.best_val_loss,
                             **objective.metrics(model, val_feats, cfg.train.batch_size, pad_id, device)})
                if cfg.train.early_stopping_patience and state.evals_without_improvement >= cfg.train.early_stopping_patience:
                    events.message(f"early stopping at step {state.step}: no improvement in {state.evals_without_improvement} evaluations")
                    status = "early_stopped"
            if state.step % cfg.train.save_every == 0 or state.step == total_steps or status != "completed":
                path = save_checkpoint(run.checkpoints, model, optimizer, scheduler, state, cfg.train.keep_checkpoints)
                events.emit({"type": "checkpoint", "step": state.step, "path": str(path)})
            if status != "completed":
                break
        if status == "stopped":
            path = save_checkpoint(run.checkpoints, model, optimizer, scheduler, state, cfg.train.keep_checkpoints)
            events.emit({"type": "checkpoint", "step": state.step, "path": str(path)})
            events.message(f"stopped at step {state.step}; resume with --resume")
        train_s = time.perf_counter() - loop_start

        # ---- save
        final: dict[str, Any] = {"steps": state.step, "trained_tokens": state.tokens, "train_loss": losses[-1] if losses else None,
                                 "tokens_per_s": (state.tokens - tokens_at_start) / max(train_s, 1e-9)}
        if status != "stopped":
            if best_weights is not None:  # early stopping keeps the best validated weights, not the last
                _load_trainable(model, best_weights)
            if val_feats:
                final["val_loss"] = evaluate_loss(model, objective, val_feats, cfg.train.batch_size, pad_id, device)
                final.update(objective.metrics(model, val_feats, cfg.train.batch_size, pad_id, device))
            artifact = method.save(model, run.root)
            tokenizer.save_pretrained(artifact)
            final["artifact"] = str(artifact)
            events.emit({"type": "final", **final})
    _finish(run, status, started, setup_s, final, train_s=train_s)
    return TrainResult(run.root, status, state.step, state.tokens, final, losses)


def _accumulate(model, objective, feats, cfg: RunConfig, layout: "BatchLayout", state: LoopState, pad_id: int, device) -> tuple[float, int]:
    """Forward/backward `grad_accum` micro-batches; returns (summed loss, supervised tokens).

    Gradients hold the *sum* over tokens; the caller divides by the token count.
    """
    loss_total, n_total = 0.0, 0
    for _ in range(cfg.train.grad_accum):
        batches = micro_batches(len(feats), cfg.train.batch_size, cfg.train.seed, state.epoch)
        if state.micro_batch >= len(batches):
            state.epoch, state.micro_batch = state.epoch + 1, 0
            if n_total:  # an optimizer step never spans two epochs
                break
            batches = micro_batches(len(feats), cfg.train.batch_size, cfg.train.seed, state.epoch)
        chosen = [feats[i] for i in batches[state.micro_batch]]
        state.micro_batch += 1
        if layout.packing:  # the same examples in another layout: the same summed loss and gradient
            parts = row_chunks(objective.pack(chosen, pad_id, cfg.model.max_length), layout.rows_per_pass)
        else:
            parts = [objective.collate(chosen, pad_id)]
        for part in parts:
            loss, n = objective.loss(model, {k: v.to(device) for k, v in part.items()})
            loss.backward()
            loss_total += loss.item()
            n_total += n
    return loss_total, n_total


CPU_PASS_BYTES = 256 * 2 ** 20  # estimated activations of one forward/backward pass when rows per pass are automatic


@dataclass(frozen=True)
class BatchLayout:
    """How micro-batches reach the model: packed rows (and how many per forward/backward) or padding."""

    packing: bool
    rows_per_pass: int | None  # None: every packed row of the micro-batch in one pass
    why: str

    def describe(self) -> str:
        if not self.packing:
            return f"padded ({self.why})"
        rows = "all rows" if self.rows_per_pass is None else f"{self.rows_per_pass} row{'s' * (self.rows_per_pass > 1)}"
        return f"packed, {rows} per forward/backward ({self.why})"


def batch_layout(cfg: RunConfig, model, objective, pad_id: int, device: torch.device) -> BatchLayout:
    """Resolve train.packing / train.packed_rows_per_pass (null = automatic) for this model and objective.

    Packing is refused outright when asked for explicitly and impossible; left automatic, it
    falls back to padding and says why. Rows per pass on CPU: as many packed rows as fit
    `CPU_PASS_BYTES` of estimated activations, at least one. For a 25.7M Llama at 512 tokens
    that is one row, measured as fast as all rows at once at under half the peak memory
    (bench/train_throughput.py): a 512-token row already runs the matrix multiplies at full
    speed while smaller activations stay in cache and the allocator reuses them. Small models
    keep all rows in one pass (their per-pass overhead would dominate: one 128-token row per
    pass made the demo's pretraining steps 2x slower). GPUs want the bigger passes.
    """
    train = cfg.train
    if train.packing is False:
        return BatchLayout(False, None, "train.packing: false")
    problem = _packing_problem(model, objective, pad_id)
    if problem:
        headline, cause = problem
        if train.packing:
            raise ConfigError(headline, [Problem("train.packing", cause, "set train.packing: false")])
        return BatchLayout(False, None, f"not packed: {cause}")
    why = "train.packing: true" if train.packing else "packing: the model keeps packed examples apart"
    if train.packed_rows_per_pass or device.type != "cpu":
        return BatchLayout(True, train.packed_rows_per_pass, why)
    per_row = estimate_for_model(model, cfg.method, 1, cfg.model.max_length, gradient_checkpointing=train.gradient_checkpointing).memory_bytes["activations"]
    rows = max(1, CPU_PASS_BYTES // max(per_row, 1))
    budget = f"~{per_row / 2 ** 20:.0f} MiB of activations per row, {CPU_PASS_BYTES // 2 ** 20} MiB per pass on CPU"
    return BatchLayout(True, None if rows >= train.batch_size else int(rows), f"{why}; {budget}")


def _packing_problem(model, objective, pad_id: int) -> tuple[str, str] | None:
    """(headline, cause) of why this objective/model pair cannot be packed, or None."""
    if not hasattr(objective, "pack"):
        return f"train.packing is not available for the {objective.name} objective", f"{objective.name} batches are not token sequences"
    if not packing_matches_padding(model, pad_id):
        return f"{type(model).__name__} does not keep packed examples apart", "its attention mask ignores the position restarts between packed examples"
    return None


@torch.no_grad()
def evaluate_loss(model, objective, feats, batch_size: int, pad_id: int, device) -> float:
    """Mean loss per supervised token over `feats`."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(feats), batch_size):
        batch = objective.collate(feats[i:i + batch_size], pad_id)
        loss, n = objective.loss(model, {k: v.to(device) for k, v in batch.items()})
        total, count = total + loss.item(), count + n
    return total / max(count, 1)


def _checkpoint_to_resume(run: RunDir, resume: bool) -> Path | None:
    if resume:
        found = latest_checkpoint(run.checkpoints)
        if found is None:
            raise ConfigError(f"nothing to resume in {run.root}", [Problem("output_dir", "no checkpoint found", "run without --resume to start fresh")])
        return found
    if latest_checkpoint(run.checkpoints) or (run.root / "adapter").exists() or (run.root / "model").exists():
        raise ConfigError(f"run directory {run.root} already holds a run",
                          [Problem("output_dir", "would overwrite an earlier run", "pass --resume to continue it, or choose another output_dir")])
    return None


def _load_splits(cfg: RunConfig) -> tuple[list, list]:
    train_examples = read_examples(cfg.data.train, cfg.data.format)
    if cfg.data.validation is not None:
        return train_examples, read_examples(cfg.data.validation, cfg.data.format)
    if cfg.data.validation_fraction == 0:
        return train_examples, []
    n_val = max(1, int(len(train_examples) * cfg.data.validation_fraction))
    g = torch.Generator().manual_seed(cfg.train.seed)
    order = torch.randperm(len(train_examples), generator=g).tolist()
    return [train_examples[i] for i in order[n_val:]], [train_examples[i] for i in order[:n_val]]


def _dataset_lineage(cfg: RunConfig, train_examples: list, val_examples: list) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, path, n in (("train", cfg.data.train, len(train_examples)), ("validation", cfg.data.validation, len(val_examples)), ("test", cfg.data.test, None)):
        if path is not None:
            out[key] = {**dataset_fingerprint(path), "examples": n}  # points at a prepared dataset's manifest too
    return out


def _load_trainable(model, weights: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def _finish(run: RunDir, status: str, started: float, setup_s: float, result: dict[str, Any], train_s: float | None = None) -> None:
    manifest = run.read_manifest()
    manifest.update({"status": status, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "result": result, "memory": peak_memory(),
                     "timings": {"setup_s": round(setup_s, 3), "train_s": round(train_s or 0.0, 3), "total_s": round(time.perf_counter() - started, 3)}})
    run.write_manifest(manifest)
