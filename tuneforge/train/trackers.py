"""Experiment trackers (train.report_to): TensorBoard event files in the run directory, MLflow runs.

A tracker is one more sink of the typed training events (`Events` fans every event out to it): train
and eval events become scalars at their step, the final result becomes `final/*`. When the run ends
(`close`) the resolved config, manifest.json (lineage: data hashes, base-model hash), metrics.jsonl
and the artifact folder with its model card are logged and the tracker's run is closed (FAILED when
training raised, KILLED when it was stopped to resume later).

mlflow and tensorboard are imported only when a run asks for them: importing mlflow takes ~10 s.

A tracker that raises once training runs (a server gone, a full disk) never stops training: `Events` drops
it and emits one warning Message naming the tracker and the error (`tracker_failed`); metrics.jsonl and
the other trackers go on. A store that cannot be opened at the start is a ConfigError before any step.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from tuneforge.config import RunConfig
from tuneforge.errors import ConfigError, Problem
from tuneforge.train.progress import EvalDone, Event, Finished, Message, TrainStep
from tuneforge.train.rundir import RunDir

MLFLOW_RUN_FILE = "mlflow_run.json"  # the MLflow run id of this run directory: a resumed run continues it
TENSORBOARD_DIR = "tensorboard"
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


class Tracker(Protocol):
    name: str  # the train.report_to entry

    def event(self, event: Event) -> None: ...

    def close(self, failed: bool) -> None: ...


def open_trackers(cfg: RunConfig, run: RunDir) -> list[Tracker]:
    """One tracker per `train.report_to` entry (call after the run directory is prepared)."""
    openers = {"tensorboard": TensorBoardTracker, "mlflow": MLflowTracker}
    return [openers[name](cfg, run) for name in dict.fromkeys(cfg.train.report_to)]


def tracker_failed(tracker: Tracker, exc: BaseException, when: str) -> str:
    """The one warning of a tracker that raised and is turned off for the rest of the run."""
    name = getattr(tracker, "name", type(tracker).__name__)
    reason = str(exc).splitlines()[0][:300] if str(exc) else ""
    return (
        f"report_to {name} failed while {when} ({type(exc).__name__}: {reason}); it is off for the rest of this "
        "run, training goes on and metrics.jsonl keeps every event"
    )


def scalars(event: Event) -> tuple[int, dict[str, float]] | None:
    """(step, {name: value}) of the numbers an event carries; None for events without numbers."""
    if isinstance(event, TrainStep):
        return event.step, {
            "train/loss": event.loss,
            "train/lr": event.lr,
            "train/tokens": float(event.tokens),
            "train/tokens_per_s": event.tokens_per_s,
            **{f"train/{k}": float(v) for k, v in getattr(event, "metrics", {}).items() if _is_number(v)},
        }
    if isinstance(event, EvalDone):
        return event.step, {
            "eval/val_loss": event.val_loss,
            "eval/best_val_loss": event.best_val_loss,
            **{f"eval/{k}": float(v) for k, v in event.metrics.items() if _is_number(v)},
        }
    if isinstance(event, Finished):
        return int(event.metrics.get("steps", 0)), {
            f"final/{k}": float(v) for k, v in event.metrics.items() if _is_number(v) and k != "steps"
        }
    return None


def flat_params(config: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, str]]:
    """("train.lr", "0.0002") pairs of a nested config dict; lists as JSON."""
    for key, value in config.items():
        if isinstance(value, dict):
            yield from flat_params(value, f"{prefix}{key}.")
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            yield f"{prefix}{key}", text[:MAX_PARAM_CHARS]


def default_mlflow_uri(run_root: Path) -> tuple[str, str]:
    """(tracking URI, artifact root) used when train.mlflow_tracking_uri is unset: one SQLite store and one
    artifact folder beside the run directories, so the runs of one folder compare in one MLflow UI."""
    parent = run_root.resolve().parent
    return f"sqlite:///{parent / 'mlruns.db'}", (parent / "mlartifacts").as_uri()


def artifact_root_for(uri: str) -> str | None:
    """Artifacts of a new experiment in a user's SQLite store go beside the database file; MLflow's own
    default is ./mlruns in whatever folder the process runs from. Servers choose their own (None)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()
    return None


class TensorBoardTracker:
    """Scalars per step and the config/manifest as text, in <run>/tensorboard (`tensorboard --logdir`)."""

    name = "tensorboard"

    def __init__(self, cfg: RunConfig, run: RunDir):
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        self.writer = SummaryWriter(str(run.root / TENSORBOARD_DIR))
        self.writer.add_text("config", _fenced(cfg.to_yaml(), "yaml"))

    def event(self, event: Event) -> None:
        if isinstance(event, Message):
            self.writer.add_text("messages", event.text)
        elif (numbers := scalars(event)) is not None:
            step, values = numbers
            for name, value in values.items():
                self.writer.add_scalar(name, value, step)

    def close(self, failed: bool) -> None:
        self.writer.add_text("manifest", _fenced(json.dumps(self.run.read_manifest(), indent=2, default=str), "json"))
        self.writer.close()


class MLflowTracker:
    """One MLflow run per run directory: params = the resolved config, metrics per step, lineage as tags,
    config/manifest/metrics.jsonl and the artifact folder as artifacts."""

    name = "mlflow"

    def __init__(self, cfg: RunConfig, run: RunDir):
        from mlflow.tracking import MlflowClient

        self.run, self.artifact, self.finished = run, None, False
        uri, artifact_root = (
            (cfg.train.mlflow_tracking_uri, artifact_root_for(cfg.train.mlflow_tracking_uri))
            if cfg.train.mlflow_tracking_uri
            else default_mlflow_uri(run.root)
        )
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.run_id = self._resume_or_create(cfg, artifact_root)
        except Exception as exc:  # an unreachable server, a bad URI: before any training time is spent
            raise ConfigError(
                f"cannot open the MLflow store for report_to: mlflow ({type(exc).__name__}: {exc})",
                [
                    Problem(
                        "train.mlflow_tracking_uri",
                        f"{uri.split('@')[-1]} could not be opened",
                        "fix the URI (sqlite:///path.db, http://host:5000) or remove mlflow from train.report_to",
                    )
                ],
            ) from None

    def _resume_or_create(self, cfg: RunConfig, artifact_root: str | None) -> str:
        saved = self.run.root / MLFLOW_RUN_FILE
        if saved.exists():  # a resumed run continues its MLflow run when the store still has it
            run_id = json.loads(saved.read_text())["run_id"]
            try:
                self.client.update_run(run_id, status="RUNNING")
                return run_id
            except Exception:  # another store: start a new MLflow run
                pass
        name = cfg.train.mlflow_experiment
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment
            else self.client.create_experiment(name, artifact_location=artifact_root)
        )
        run_id = self.client.create_run(
            experiment_id, run_name=self.run.root.name, tags=_lineage_tags(self.run.read_manifest())
        ).info.run_id
        self._log_batch(run_id, params=list(flat_params(cfg.model_dump(mode="json"))))
        saved.write_text(json.dumps({"run_id": run_id, "experiment": name}))
        return run_id

    def _log_batch(self, run_id: str, metrics: tuple = (), params: list[tuple[str, str]] = ()) -> None:
        from mlflow.entities import Metric, Param

        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params[i : i + 100]])
        if metrics:
            self.client.log_batch(run_id, metrics=[Metric(*m) for m in metrics])

    def event(self, event: Event) -> None:
        if isinstance(event, Finished):
            self.artifact, self.finished = event.metrics.get("artifact"), True
        if (numbers := scalars(event)) is not None:
            step, values = numbers
            now = int(time.time() * 1000)
            self._log_batch(self.run_id, metrics=[(name, value, now, step) for name, value in values.items()])

    def close(self, failed: bool) -> None:
        for name in ("config.yaml", "manifest.json"):
            if (self.run.root / name).exists():
                self.client.log_artifact(self.run_id, str(self.run.root / name))
        with tempfile.TemporaryDirectory() as tmp:  # the events file as written, through its one owner
            self.run.copy_metrics(Path(tmp))
            self.client.log_artifacts(self.run_id, tmp)
        if self.artifact and Path(self.artifact).is_dir():
            self.client.log_artifacts(self.run_id, self.artifact, artifact_path=Path(self.artifact).name)
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED" if self.finished else "KILLED")


def _lineage_tags(manifest: dict[str, Any]) -> dict[str, str]:
    """The manifest's lineage as searchable MLflow tags (tuneforge.base_model_sha256, tuneforge.data.train.sha256)."""
    base = manifest.get("base_model", {})
    tags = {
        "tuneforge.base_model": str(base.get("name")),
        "tuneforge.base_model_sha256": str(base.get("weights_sha256")),
        "tuneforge.objective": str(manifest.get("objective")),
        "tuneforge.method": str(manifest.get("method", {}).get("name")),
        "tuneforge.version": str(manifest.get("tuneforge_version")),
    }
    for split, fingerprint in manifest.get("datasets", {}).items():
        tags[f"tuneforge.data.{split}.sha256"] = str(fingerprint.get("sha256"))
    return tags


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fenced(text: str, lang: str) -> str:  # TensorBoard renders text as Markdown
    return f"```{lang}\n{text}\n```"
