"""Hyperparameter search on Optuna: plan (validated before any trial), study, objective, pruning.

Each trial is a normal `tuneforge.train.train` run in `<output_dir>/trial-NNNN/` whose config is the
base config plus the trial's `key=value` overrides. Validation losses reach Optuna through the typed
`EvalDone` events (`trial.report`); a trial the pruner gives up on is stopped through `should_stop`
and recorded as pruned. A trial that raises is recorded as failed with its error (user attr
"error"); the study goes on. The study lives in an Optuna RDB storage: SQLite in the study folder
by default, PostgreSQL when several processes or machines share one study.
"""

from __future__ import annotations

import logging
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tuneforge.config import RunConfig, load_config
from tuneforge.errors import ConfigError, Problem, TrainingError
from tuneforge.train import train
from tuneforge.train.progress import EvalDone, Event
from tuneforge.tune.space import Param, parse_space, yaml_scalar

PrunerName = Literal["median", "hyperband", "none"]
Direction = Literal["minimize", "maximize"]
# A dead process's running trial is marked failed once its heartbeat is this stale (RDB storage only).
HEARTBEAT_S, GRACE_S = 30, 120
_LOCK_KEY = zlib.crc32(b"tuneforge tune: create the optuna schema")


@dataclass
class SearchPlan:
    """A validated search: the base config and its fixed overrides, the space, where the study lives."""

    config: Path  # absolute
    fixed: list[str]
    space: list[Param]
    folder: Path  # the study folder: the config's output_dir
    study_name: str
    storage: str
    metric: str = "val_loss"
    direction: Direction = "minimize"
    pruner: PrunerName = "median"
    seed: int = 42
    eval_every: int = 50
    enqueued: list[dict] = field(default_factory=list)  # params to try first (Python API, tests)

    def trial_dir(self, number: int) -> Path:
        return self.folder / f"trial-{number:04d}"

    def config_for(self, overrides: list[str], output_dir: Path) -> RunConfig:
        """The run config of one trial: exactly what `tuneforge train CONFIG *fixed *overrides` would load."""
        return load_config(self.config, [*self.fixed, *overrides, f"output_dir={yaml_scalar(str(output_dir))}"])


def plan_search(
    config: Path,
    spaces: list[str],
    overrides: list[str] | None = None,
    *,
    storage: str | None = None,
    study: str | None = None,
    metric: str = "val_loss",
    direction: Direction = "minimize",
    pruner: PrunerName = "median",
) -> SearchPlan:
    """Parse the space and validate the config at every corner of it, before any trial runs."""
    space = parse_space(spaces)
    config, fixed = Path(config).resolve(), list(overrides or [])
    base = load_config(config, fixed)  # the config itself, with the fixed overrides
    _validate_corners(config, fixed, space)
    if metric == "val_loss" and base.data.validation is None and base.data.validation_fraction == 0:
        raise ConfigError(
            "the search optimises val_loss but the config has no validation data",
            [
                Problem(
                    f"{config}: data.validation",
                    "no validation file and validation_fraction is 0",
                    "add data.validation (or a validation_fraction), or pass --metric",
                )
            ],
        )
    folder = Path(base.output_dir).resolve()
    return SearchPlan(
        config=config,
        fixed=fixed,
        space=space,
        folder=folder,
        study_name=study or folder.name,
        storage=storage or f"sqlite:///{folder / 'study.db'}",
        metric=metric,
        direction=direction,
        pruner=pruner,
        seed=base.train.seed,
        eval_every=base.train.eval_every,
    )


def _validate_corners(config: Path, fixed: list[str], space: list[Param]) -> None:
    """Load the config with each parameter at each end (or choice) and the others at their first: every problem once,
    named by the --space whose key it is about (else by the parameter being varied)."""
    problems: dict[tuple, Problem] = {}
    first = [p.corners()[0] for p in space]
    for i, param in enumerate(space):
        for value in param.corners():
            values = [*first[:i], value, *first[i + 1 :]]
            try:
                load_config(config, [*fixed, *(p.override(v) for p, v in zip(space, values))])
            except ConfigError as exc:
                for p in exc.problems or [Problem(str(config), exc.summary)]:
                    owner = next((j for j, q in enumerate(space) if p.where.endswith(f": {q.key}")), i)
                    shown = f"{space[owner].key}={yaml_scalar(values[owner])}"
                    named = Problem(f"--space '{space[owner].spec}' at {shown}: {p.where}", p.message, p.fix)
                    problems.setdefault((shown, p.where, p.message), named)
    if problems:
        raise ConfigError(
            f"the search space makes {len(problems)} invalid config(s); nothing was run", list(problems.values())
        )


def open_study(plan: SearchPlan) -> optuna.Study:
    """Create the study, or join it when another process (or an earlier run) made it already."""
    if plan.storage.startswith("sqlite:///"):
        plan.folder.mkdir(parents=True, exist_ok=True)
    url = storage_url(plan.storage)
    try:
        with _first_use_lock(url), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: stable since optuna 3
            storage = optuna.storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
            study = optuna.create_study(
                storage=storage,
                study_name=plan.study_name,
                direction=plan.direction,
                sampler=PerTrialSeedTPE(plan.seed),
                pruner=_pruner(plan),
                load_if_exists=True,
            )
    except (SQLAlchemyError, ImportError) as exc:  # a user's URL, server or permissions: no traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        fix = (
            "check the URL (sqlite:///path or postgresql+psycopg://user:pass@host:port/db), that the server runs "
            "and that the user may create tables"
        )
        raise ConfigError(
            "cannot open the study's storage", [Problem(f"--storage {hide_password(url)}", first, fix)]
        ) from None
    if study.direction.name.lower() != plan.direction:
        raise ConfigError(
            f"study '{plan.study_name}' already exists and {study.direction.name.lower()}s",
            [
                Problem(
                    "--direction", f"asked to {plan.direction}", "pass the study's direction, or another --study name"
                )
            ],
        )
    for params in plan.enqueued:
        study.enqueue_trial(params, skip_if_exists=True)
    return study


def storage_url(url: str) -> str:
    """SQLAlchemy reads a bare postgresql:// as psycopg2, which tuneforge does not install: use psycopg 3."""
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return "postgresql+psycopg://" + url[len(bare) :]
    return url


def hide_password(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show no more than its scheme
        return url.split("://")[0] + "://..."


@contextmanager
def _first_use_lock(url: str):
    """On PostgreSQL, one process at a time creates Optuna's tables and the study: two `tuneforge tune` started
    together on a fresh database would otherwise both run CREATE TYPE/TABLE and one would fail."""
    if not url.startswith("postgresql"):
        yield
        return
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _LOCK_KEY})
    finally:
        engine.dispose()


def _pruner(plan: SearchPlan) -> optuna.pruners.BasePruner:
    if plan.pruner == "median":
        # compare with the completed trials' validation losses at the same step, once two have finished
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if plan.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=plan.eval_every, max_resource="auto")
    return optuna.pruners.NopPruner()


class PerTrialSeedTPE(optuna.samplers.BaseSampler):
    """TPE seeded from (train.seed, trial number).

    One seeded TPESampler per process would draw the same start-up points in every process that
    shares a study; the trial number is unique in the storage, so each trial gets its own stream,
    and a rerun of a study reproduces it. Concurrent trials are told apart by TPE's constant liar.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.inner = self._tpe(0)

    def _tpe(self, number: int) -> optuna.samplers.TPESampler:
        return optuna.samplers.TPESampler(seed=zlib.crc32(f"{self.seed}:{number}".encode()), constant_liar=True)

    def before_trial(self, study, trial) -> None:
        self.inner = self._tpe(trial.number)
        self.inner.before_trial(study, trial)

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)


class PruneWatch:
    """Reports each validation to the trial; once the pruner says so, asks train() to stop."""

    def __init__(self, trial: optuna.Trial, metric: str):
        self.trial, self.metric, self.pruned_at = trial, metric, None

    def on_event(self, event: Event) -> None:
        if not isinstance(event, EvalDone) or self.pruned_at is not None:
            return
        value = event.val_loss if self.metric == "val_loss" else event.metrics.get(self.metric)
        if value is None:
            return
        self.trial.report(value, event.step)
        if self.trial.should_prune():
            self.pruned_at = event.step

    def should_stop(self) -> bool:
        return self.pruned_at is not None


class TrialObjective:
    """Optuna's objective: sample overrides, train the trial's run directory, return the metric."""

    def __init__(self, plan: SearchPlan, progress: bool = False):
        self.plan, self.progress = plan, progress

    def __call__(self, trial: optuna.Trial) -> float:
        plan = self.plan
        overrides = [p.override(p.suggest(trial)) for p in plan.space]
        run_dir = plan.trial_dir(trial.number)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("overrides", overrides)
        watch = PruneWatch(trial, plan.metric)
        try:
            cfg = plan.config_for(overrides, run_dir)
            result = train(cfg, on_event=watch.on_event, should_stop=watch.should_stop, progress=self.progress)
            if watch.pruned_at is not None:
                trial.set_user_attr("pruned_at_step", watch.pruned_at)
                raise optuna.TrialPruned(f"pruned at step {watch.pruned_at}")
            value = result.final_metrics.get(plan.metric)
            if value is None:
                known = sorted(k for k, v in result.final_metrics.items() if isinstance(v, int | float))
                raise TrainingError(
                    f"the run has no metric '{plan.metric}'",
                    [Problem("--metric", f"the final metrics are {known}", "pass one of them")],
                )
            return float(value)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # recorded on the trial; optimize(catch=...) keeps the study going
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise


def run_search(
    plan: SearchPlan, trials: int | None, timeout: float | None = None, progress: bool = False, on_trial=None
) -> optuna.Study:
    """Run `trials` trials in this process (other processes may add theirs to the same study)."""
    level = optuna.logging.get_verbosity()
    # Optuna logs each failed trial with its traceback; the error is kept on the trial and the CLI prints a line
    optuna.logging.set_verbosity(logging.ERROR)
    try:
        study = open_study(plan)
        callbacks = [lambda _study, frozen: on_trial(frozen)] if on_trial else None
        study.optimize(
            TrialObjective(plan, progress), n_trials=trials, timeout=timeout, catch=(Exception,), callbacks=callbacks
        )
    finally:
        optuna.logging.set_verbosity(level)
    return study
