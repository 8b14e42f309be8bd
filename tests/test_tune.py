"""Hyperparameter search (`tuneforge tune`): space parsing, validation before any trial, a search that finds the
better learning rate and prunes the hopeless one, failed trials, best.yaml, the report, a shared PostgreSQL study."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import optuna
import pytest
import yaml
from typer.testing import CliRunner

from helpers import postgres_schema
from tuneforge.config import load_config
from tuneforge.errors import ConfigError
from tuneforge.train import train
from tuneforge.tune import parse_space, plan_search, run_search, trial_rows

GOOD_LR, HOPELESS_LR = 3e-3, 1e-7


def write_config(tiny_model_dir, data, folder, **train_kw) -> str:
    """A full fine-tune of the tiny Llama, 3 steps, validated after each; the study folder is `folder/study`."""
    train_section = {
        **dict(max_steps=3, batch_size=4, lr=1e-3, eval_every=1, save_every=100, log_every=1, warmup_ratio=0.0, seed=7),
        **train_kw,
    }
    raw = {
        "objective": "sft",
        "output_dir": str(folder / "study"),
        "model": {"name": str(tiny_model_dir), "max_length": 128},
        "data": {"train": str(data["train"]), "validation": str(data["validation"])},
        "method": {"name": "full"},
        "train": train_section,
    }
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


# ---- the space


def test_space_parses_every_distribution():
    lr, r, steps, sched, warm = parse_space(
        [
            "train.lr=loguniform(1e-5, 1e-3)",
            "method.r=choice(8,16,32)",
            "train.max_steps=int(2,10,2)",
            "train.scheduler=choice(linear,cosine)",
            "train.warmup_ratio=uniform(0,0.2)",
        ]
    )
    assert (lr.kind, lr.low, lr.high) == ("loguniform", 1e-5, 1e-3)
    assert r.choices == (8, 16, 32) and sched.choices == ("linear", "cosine")
    assert (steps.kind, steps.low, steps.high, steps.step) == ("int", 2, 10, 2)
    assert (warm.kind, warm.low, warm.high) == ("uniform", 0.0, 0.2)
    # overrides read back as the value's type (PyYAML reads a bare 1e-05 as a string)
    assert lr.override(1e-5) == "train.lr=1.0e-05" and yaml.safe_load(lr.override(1e-5).split("=")[1]) == 1e-5
    assert sched.override("cosine") == "train.scheduler=cosine"


@pytest.mark.parametrize(
    "spec, says",
    [
        ("train.lr", "not of the form KEY=DIST(ARGS)"),
        ("train.lr=normal(0,1)", "unknown distribution 'normal'"),
        ("train.lr=loguniform(1e-3)", "loguniform takes 2 numbers, got 1"),
        ("train.lr=loguniform(0,1e-3)", "loguniform needs low > 0"),
        ("train.lr=uniform(1e-3,1e-5)", "must be below high"),
        ("train.lr=uniform(a,1)", "'a' is not a number"),
        ("method.r=int(4,8.5)", "'8.5' is not an integer"),
        ("method.r=choice()", "choice needs one or more"),
        ("method.r=choice(8,8)", "twice"),
        ("output_dir=choice(a,b)", "output_dir is the study folder"),
    ],
)
def test_space_errors_name_the_space_and_what_is_allowed(spec, says):
    with pytest.raises(ConfigError) as exc:
        parse_space(["train.seed=choice(1,2)", spec])
    (problem,) = exc.value.problems
    assert problem.where == f"--space #2 '{spec}'" and says in problem.message
    if "study folder" not in says:
        assert "loguniform(low,high), uniform(low,high), int(low,high[,step]) or choice(a,b,...)" in problem.fix


def test_space_reports_every_problem_at_once():
    with pytest.raises(ConfigError) as exc:
        parse_space(["train.lr=oops(1)", "method.r=choice(4)", "method.r=choice(8)", "train.seed=int(3,1)"])
    assert [p.where.split(" '")[0] for p in exc.value.problems] == ["--space #1", "--space #3", "--space #4"]


def test_values_the_config_refuses_stop_the_search_before_any_trial(tiny_model_dir, support_data, tmp_path):
    config = write_config(tiny_model_dir, support_data, tmp_path)
    with pytest.raises(ConfigError) as exc:
        plan_search(config, ["train.lr=uniform(0,1e-3)", "train.lrr=choice(1,2)", "train.scheduler=choice(linear,x)"])
    text = str(exc.value)
    assert "--space 'train.lr=uniform(0,1e-3)' at train.lr=0.0" in text and "greater than 0" in text
    assert "--space 'train.lrr=choice(1,2)' at train.lrr=1" in text and "unknown key" in text
    assert "at train.scheduler=x" in text and "at train.scheduler=linear" not in text
    assert not (tmp_path / "study").exists()  # no study, no trial


# ---- searching


@pytest.mark.slow
def test_six_trials_find_the_better_learning_rate_and_prune_the_hopeless_one(tiny_model_dir, support_data, tmp_path):
    plan = plan_search(
        write_config(tiny_model_dir, support_data, tmp_path), [f"train.lr=choice({HOPELESS_LR},{GOOD_LR})"]
    )
    # one of each first: the median pruner compares later trials with these two (TPE draws the other four)
    plan.enqueued = [{"train.lr": HOPELESS_LR}, {"train.lr": GOOD_LR}]
    study = run_search(plan, trials=6)

    rows = trial_rows(study)
    assert [r["number"] for r in rows] == list(range(6))
    assert study.best_params == {"train.lr": GOOD_LR}
    assert {r["params"]["train.lr"] for r in rows} == {HOPELESS_LR, GOOD_LR}  # both were tried
    later = rows[2:]
    assert {r["params"]["train.lr"] for r in later} == {HOPELESS_LR, GOOD_LR}, later  # TPE drew both again
    assert all((r["state"] == "pruned") == (r["params"]["train.lr"] == HOPELESS_LR) for r in later), later
    for r in rows:  # every trial is a normal run directory under the study folder
        run = tmp_path / "study" / f"trial-{r['number']:04d}"
        assert r["run_dir"] == str(run) and (run / "config.yaml").exists()
        manifest = json.loads((run / "manifest.json").read_text())
        assert load_config(run / "config.yaml").train.lr == r["params"]["train.lr"]
        if r["state"] == "pruned":  # stopped through should_stop right after the eval that lost
            assert manifest["status"] == "stopped" and manifest["result"]["steps"] == 1 and not (run / "model").exists()
        else:
            assert manifest["status"] == "completed" and (run / "model").exists()
            assert r["value"] == pytest.approx(manifest["result"]["val_loss"])
    assert (tmp_path / "study" / "study.db").exists()


@pytest.mark.slow
def test_a_failed_trial_is_recorded_and_the_study_goes_on(tiny_model_dir, support_data, tmp_path, monkeypatch):
    import tuneforge.tune.search as search

    calls = {"n": 0}

    def sometimes_broken(cfg, **kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk on fire")
        return train(cfg, **kw)

    monkeypatch.setattr(search, "train", sometimes_broken)
    plan = plan_search(
        write_config(tiny_model_dir, support_data, tmp_path, max_steps=2),
        ["train.lr=loguniform(1e-4,1e-2)"],
        pruner="none",
    )
    study = run_search(plan, trials=3)
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert study.trials[1].user_attrs["error"] == "RuntimeError: disk on fire"
    assert trial_rows(study)[1]["note"] == "RuntimeError: disk on fire"


@pytest.mark.slow
def test_cli_prints_the_table_and_writes_best_yaml_that_trains_and_the_report(tiny_model_dir, support_data, tmp_path):
    from tuneforge.cli.main import app

    config = write_config(tiny_model_dir, support_data, tmp_path, max_steps=2)
    result = CliRunner().invoke(
        app,
        [
            "tune",
            config,
            "train.eval_every=1",
            "--trials",
            "3",
            "--quiet",
            "--space",
            "train.lr=loguniform(1e-4,1e-2)",
            "--space",
            "train.warmup_ratio=choice(0.0,0.5)",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    study = tmp_path / "study"
    assert "trial" in result.stdout and "train.lr" in result.stdout and "complete" in result.stdout
    assert summary["best_config"] == str(study / "best.yaml") and summary["report"] == str(study / "report.html")
    page = (study / "report.html").read_text()
    for stem in ("history", "importances", "parallel"):
        assert (study / f"{stem}.png").stat().st_size > 1000 and f'src="{stem}.png"' in page

    best = load_config(study / "best.yaml")  # what `tuneforge train best.yaml` loads
    assert best.train.lr == pytest.approx(summary["best_params"]["train.lr"])
    assert best.train.warmup_ratio == summary["best_params"]["train.warmup_ratio"] and best.train.eval_every == 1
    assert best.output_dir == study / "best"
    assert train(best, progress=False).status == "completed" and (study / "best" / "model").exists()

    # a second process (here: call) joins the same SQLite study and numbers its trials on
    again = CliRunner().invoke(
        app,
        [
            "tune",
            config,
            "--trials",
            "1",
            "--quiet",
            "--space",
            "train.lr=loguniform(1e-4,1e-2)",
            "--space",
            "train.warmup_ratio=choice(0.0,0.5)",
        ],
    )
    assert again.exit_code == 0, again.output
    assert (study / "trial-0003" / "manifest.json").exists()


def test_cli_refuses_bad_options_with_their_names(tiny_model_dir, support_data, tmp_path):
    from tuneforge.cli.main import app

    config = write_config(tiny_model_dir, support_data, tmp_path)
    result = CliRunner().invoke(app, ["tune", config, "--pruner", "sometimes", "--space", "train.lr=choice(1,2)"])
    assert isinstance(result.exception, ConfigError) and "--pruner sometimes" in str(result.exception)
    result = CliRunner().invoke(app, ["tune", config, "--space", "train.lr=between(1,2)"])
    assert isinstance(result.exception, ConfigError) and "--space #1" in str(result.exception)


# ---- several processes, one study


def _tune_process(config: str, url: str, study: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-c",
        "from tuneforge.cli.main import main; main()",
        "tune",
        config,
        "--trials",
        "2",
        "--quiet",
        "--pruner",
        "none",
        "--storage",
        url,
        "--study",
        study,
        "--space",
        "train.lr=loguniform(1e-4,1e-2)",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_processes_share_one_postgres_study_without_duplicate_trials(tiny_model_dir, support_data, tmp_path):
    config = write_config(tiny_model_dir, support_data, tmp_path, max_steps=2)
    name = f"tune-test-{secrets.token_hex(4)}"
    with postgres_schema() as url:
        procs = [_tune_process(config, url, name) for _ in range(2)]
        outputs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), outputs
        study = optuna.load_study(study_name=name, storage=url)
        try:
            trials = study.get_trials()
            assert sorted(t.number for t in trials) == [0, 1, 2, 3]
            assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), [
                (t.state, t.user_attrs) for t in trials
            ]
            assert len({t.params["train.lr"] for t in trials}) == 4  # no two processes drew the same point
            assert len({t.user_attrs["run_dir"] for t in trials}) == 4
            for t in trials:
                assert json.loads((tmp_path / "study" / f"trial-{t.number:04d}" / "manifest.json").read_text())[
                    "status"
                ]
        finally:
            optuna.delete_study(study_name=name, storage=url)


def test_trials_are_seeded_from_train_seed_and_their_number():
    from tuneforge.tune.search import PerTrialSeedTPE

    def draws(seed, storage=None, name="s"):
        study = optuna.create_study(
            sampler=PerTrialSeedTPE(seed), storage=storage, study_name=name, load_if_exists=True
        )
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        return [t.params["x"] for t in study.trials]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert draws(7) == draws(7) and draws(7) != draws(8)
    # two processes on one storage (here: two Study objects) continue the numbering and draw new points
    shared = optuna.storages.InMemoryStorage()
    first, both = draws(7, shared), draws(7, shared)
    assert both[:3] == first and len(set(both)) == 6


def test_a_storage_that_cannot_be_opened_is_named_without_its_password(tiny_model_dir, support_data, tmp_path):
    from tuneforge.tune import open_study
    from tuneforge.tune.search import storage_url

    assert storage_url("postgresql://u:p@h:5432/db") == "postgresql+psycopg://u:p@h:5432/db"  # psycopg 3, not 2
    assert storage_url("sqlite:///x/study.db") == "sqlite:///x/study.db"
    plan = plan_search(
        write_config(tiny_model_dir, support_data, tmp_path),
        ["train.lr=choice(1e-3,1e-2)"],
        storage="postgresql://someone:secret@127.0.0.1:1/nowhere",
    )
    with pytest.raises(ConfigError) as exc:
        open_study(plan)
    (problem,) = exc.value.problems
    assert problem.where == "--storage postgresql+psycopg://someone:***@127.0.0.1:1/nowhere"
    assert "secret" not in str(exc.value)


def test_joining_a_study_in_the_other_direction_is_refused(tiny_model_dir, support_data, tmp_path):
    from tuneforge.tune import open_study

    config = write_config(tiny_model_dir, support_data, tmp_path)
    open_study(plan_search(config, ["train.lr=choice(1e-3,1e-2)"]))
    assert (tmp_path / "study" / "study.db").exists()
    open_study(plan_search(config, ["train.lr=choice(1e-3,1e-2)"]))  # joining it again is fine
    with pytest.raises(ConfigError) as exc:
        open_study(plan_search(config, ["train.lr=choice(1e-3,1e-2)"], metric="accuracy", direction="maximize"))
    assert "study 'study' already exists and minimizes" in str(exc.value) and "--direction" in str(exc.value)
