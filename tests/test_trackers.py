"""train.report_to: a tiny run read back through MLflow's client and TensorBoard's event reader; the numbers
match metrics.jsonl (read through RunDir.read_events), and the config, lineage and artifact are in the tracker."""

from __future__ import annotations

import json

import pytest

from helpers import make_config
from tuneforge.config import TrainSection
from tuneforge.train.progress import EvalDone, Finished, TrainStep
from tuneforge.train.rundir import RunDir
from tuneforge.train.trackers import MLFLOW_RUN_FILE, TENSORBOARD_DIR, default_mlflow_uri


def _expected(run_dir):
    events = RunDir(run_dir).read_events()
    train = {e.step: e for e in events if isinstance(e, TrainStep)}
    evals = {e.step: e for e in events if isinstance(e, EvalDone)}
    final = next(e.metrics for e in events if isinstance(e, Finished))
    return train, evals, final


@pytest.mark.slow  # importing mlflow and creating its SQLite schema: ~15-30 s on 2 shared cores
def test_a_run_reads_back_from_mlflow_and_tensorboard(tiny_model_dir, support_data, tmp_path):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuneforge.train import train

    run_dir = tmp_path / "runs" / "tracked"
    result = train(
        make_config(tiny_model_dir, support_data, run_dir, report_to=["tensorboard", "mlflow"]), progress=False
    )
    train_steps, evals, final = _expected(run_dir)
    assert len(train_steps) == 6 and len(evals) == 2

    uri, artifact_root = default_mlflow_uri(run_dir)
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlruns.db'}" and (tmp_path / "runs" / "mlruns.db").exists()
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(json.loads((run_dir / MLFLOW_RUN_FILE).read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tracked"
    assert run.info.experiment_id == client.get_experiment_by_name("tuneforge").experiment_id
    loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert loss == {s: e.loss for s, e in train_steps.items()}
    val = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "eval/val_loss")}
    assert val == {s: e.val_loss for s, e in evals.items()}
    assert run.data.metrics["final/val_loss"] == pytest.approx(final["val_loss"])
    assert run.data.metrics["final/train_loss"] == pytest.approx(result.final_metrics["train_loss"])
    # the resolved config as params, the manifest's lineage as tags, the files and the artifact as artifacts
    assert run.data.params["train.lr"] == "0.005" and run.data.params["method.r"] == "4"
    manifest = RunDir(run_dir).read_manifest()
    assert run.data.tags["tuneforge.data.train.sha256"] == manifest["datasets"]["train"]["sha256"]
    assert run.data.tags["tuneforge.base_model_sha256"] == manifest["base_model"]["weights_sha256"]
    logged = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "manifest.json", "metrics.jsonl", "adapter"} <= logged
    in_adapter = {f.path for f in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_model.safetensors", "adapter/README.md"} <= in_adapter
    assert str(artifact_root).startswith("file://") and (tmp_path / "runs" / "mlartifacts").is_dir()

    tb = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    tb.Reload()
    tb_loss = {e.step: e.value for e in tb.Scalars("train/loss")}
    assert tb_loss == pytest.approx({s: e.loss for s, e in train_steps.items()}, rel=1e-6)  # float32 in the file
    assert {e.step: e.value for e in tb.Scalars("eval/val_loss")} == pytest.approx(
        {s: e.val_loss for s, e in evals.items()}, rel=1e-6
    )
    assert {"config/text_summary", "manifest/text_summary"} <= set(tb.Tags()["tensors"])
    manifest_text = tb.Tensors("manifest/text_summary")[0].tensor_proto.string_val[0].decode()
    assert manifest["datasets"]["train"]["sha256"] in manifest_text


def test_tensorboard_alone_writes_event_files_in_the_run_directory(tiny_model_dir, support_data, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tuneforge.train import train

    run_dir = tmp_path / "run"
    train(
        make_config(tiny_model_dir, support_data, run_dir, max_steps=2, eval_every=2, report_to=["tensorboard"]),
        progress=False,
    )
    train_steps, _, final = _expected(run_dir)
    tb = EventAccumulator(str(run_dir / TENSORBOARD_DIR))
    tb.Reload()
    assert [e.step for e in tb.Scalars("train/loss")] == sorted(train_steps) == [1, 2]
    assert [e.value for e in tb.Scalars("train/loss")] == pytest.approx(
        [e.loss for _, e in sorted(train_steps.items())], rel=1e-6
    )
    assert tb.Scalars("final/val_loss")[0].value == pytest.approx(final["val_loss"], rel=1e-6)
    assert not (run_dir / MLFLOW_RUN_FILE).exists()


def test_report_to_refuses_wandb_without_the_package_and_a_uri_without_mlflow():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="report_to wandb is not supported: tuneforge has no W&B tracker"):
        TrainSection(report_to=["tensorboard", "wandb"])
    with pytest.raises(ValidationError, match="mlflow_tracking_uri applies to report_to: \\[mlflow\\] only"):
        TrainSection(report_to=["tensorboard"], mlflow_tracking_uri="sqlite:///x.db")
    with pytest.raises(ValidationError):
        TrainSection(report_to=["neptune"])
    assert TrainSection().report_to == []


def test_openai_integrations_are_refused_by_name_not_dropped():
    from tuneforge.serve.jobspec import check_integrations

    assert check_integrations(None) == [] and check_integrations([]) == []
    wandb, other = check_integrations([{"type": "wandb", "wandb": {"project": "p"}}, {"type": "comet"}])
    assert wandb.where == "integrations[0].type" and "tuneforge has no W&B tracker" in wandb.message
    assert '"report_to": ["mlflow"]' in wandb.fix
    assert other.where == "integrations[1].type" and "'comet' is not supported" in other.message


@pytest.mark.slow  # starts the service on the tiny demo model
def test_the_service_answers_a_wandb_integration_with_a_400_naming_the_field(tmp_path):
    import openai

    from helpers import install_tiny_demo, serve_in_thread, write_chat_jsonl
    from tuneforge.serve import keys
    from tuneforge.serve.app import create_app
    from tuneforge.serve.db import Store
    from tuneforge.serve.settings import ServeSettings

    home = tmp_path / "home"
    mp = pytest.MonkeyPatch()
    mp.setenv("TUNEFORGE_HOME", str(home))
    install_tiny_demo(home)
    settings = ServeSettings(database_url=f"sqlite:///{home / 'tf.db'}", data_dir=home / "serve", inference_threads=1)
    store = Store(settings.database_url)
    try:
        with serve_in_thread(create_app(settings, store)) as url:
            _, key = keys.create_key(store, "alpha")
            api = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
            write_chat_jsonl(tmp_path / "train.jsonl", 20)
            f = api.files.create(file=(tmp_path / "train.jsonl").open("rb"), purpose="fine-tune")
            with pytest.raises(openai.BadRequestError) as exc:
                api.fine_tuning.jobs.create(
                    model="demo", training_file=f.id, integrations=[{"type": "wandb", "wandb": {"project": "team"}}]
                )
            assert exc.value.body["param"] == "integrations[0].type"
            assert exc.value.body["code"] == "invalid_integrations" and "W&B" in exc.value.body["message"]
            with pytest.raises(openai.BadRequestError) as exc:  # a remote caller may not point the server anywhere
                api.fine_tuning.jobs.create(
                    model="demo",
                    training_file=f.id,
                    extra_body={
                        "tuneforge": {"train": {"report_to": ["mlflow"], "mlflow_tracking_uri": "http://10.0.0.1:5000"}}
                    },
                )
            assert exc.value.body["param"] == "tuneforge.train.mlflow_tracking_uri"
            assert (
                api.fine_tuning.jobs.create(
                    model="demo",
                    training_file=f.id,
                    extra_body={"tuneforge": {"train": {"report_to": ["tensorboard"]}}},
                ).status
                == "validating_files"
            )
    finally:
        mp.undo()
        store.dispose()


@pytest.mark.slow  # mlflow
def test_a_stopped_run_is_killed_in_mlflow_and_its_resume_continues_the_same_run(
    tiny_model_dir, support_data, tmp_path
):
    from mlflow.tracking import MlflowClient

    from tuneforge.train import train

    run_dir = tmp_path / "runs" / "resumed"
    store = tmp_path / "store.db"
    cfg = make_config(
        tiny_model_dir,
        support_data,
        run_dir,
        report_to=["mlflow"],
        mlflow_experiment="team",
        mlflow_tracking_uri=f"sqlite:///{store}",
    )
    steps = iter(range(100))
    train(cfg, should_stop=lambda: next(steps) >= 3, progress=False)
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    run_id = json.loads((run_dir / MLFLOW_RUN_FILE).read_text())["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"
    assert not (tmp_path / "runs" / "mlruns.db").exists()  # the URI given is used, not the default
    train(cfg, resume=True, progress=False)
    assert json.loads((run_dir / MLFLOW_RUN_FILE).read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and client.get_experiment(run.info.experiment_id).name == "team"
    history = {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}
    train_steps, _, _ = _expected(run_dir)
    assert history == {s: e.loss for s, e in train_steps.items()} and sorted(history) == [1, 2, 3, 4, 5, 6]
    assert len(client.search_runs([run.info.experiment_id])) == 1
    # artifacts of a user's SQLite store land beside it, not in ./mlruns of the working folder
    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())


class _Recorder:
    """A tracker that keeps what it gets; `fail_on` makes its event() raise for that event type."""

    def __init__(self, name, fail_on=None, fail_close=False):
        self.name, self.fail_on, self.fail_close = name, fail_on, fail_close
        self.events, self.closed = [], []

    def event(self, event):
        if self.fail_on and isinstance(event, self.fail_on):
            raise ConnectionError("the tracking server went away")
        self.events.append(event)

    def close(self, failed):
        if self.fail_close:
            raise OSError("No space left on device")
        self.closed.append(failed)


def test_a_failing_tracker_is_warned_about_once_and_turned_off_while_the_others_go_on(tmp_path):
    from tuneforge.train.progress import Events, Message

    (tmp_path / "run").mkdir()
    run = RunDir(tmp_path / "run")
    flaky, steady, bad_close = (
        _Recorder("mlflow", fail_on=TrainStep),
        _Recorder("tensorboard"),
        _Recorder("x", None, True),
    )
    with Events(run, None, 3, False, [flaky, steady, bad_close]) as events:
        for step in (1, 2, 3):
            events.emit(TrainStep(step, 0, 1.0, 1e-3, 10, 100.0))
    records = run.read_events()
    assert [e.step for e in records if isinstance(e, TrainStep)] == [1, 2, 3]  # metrics.jsonl has every step
    warnings = [e for e in records if isinstance(e, Message) and e.level == "warning"]
    assert len(warnings) == 2  # one for the tracker that failed on events, one for the one that failed to close
    assert warnings[0].text.startswith("report_to mlflow failed while logging a TrainStep event (ConnectionError: ")
    assert "it is off for the rest of this run, training goes on" in warnings[0].text
    assert warnings[1].text.startswith("report_to x failed while closing its run (OSError: No space left on device)")
    assert flaky.events == [] and flaky.closed == []  # off: nothing more, not even close
    # the warning reaches the steady tracker (before step 1, which failed the first tracker on its way to it)
    assert [type(e).__name__ for e in steady.events] == ["Message", "TrainStep", "TrainStep", "TrainStep", "Message"]
    assert steady.events[0] == warnings[0] and steady.events[-1] == warnings[1] and steady.closed == [False]


@pytest.mark.slow  # a real (tiny) run: ~5 s alone, more on a busy machine
def test_a_run_whose_tracker_fails_mid_run_completes(tiny_model_dir, support_data, tmp_path, monkeypatch):
    from tuneforge.train import train
    from tuneforge.train.progress import Message
    from tuneforge.train.trackers import TensorBoardTracker

    seen = []

    def flaky(self, event):
        if isinstance(event, TrainStep) and event.step == 2:
            raise OSError("No space left on device")
        seen.append(event)

    monkeypatch.setattr(TensorBoardTracker, "event", flaky)
    run_dir = tmp_path / "run"
    result = train(
        make_config(tiny_model_dir, support_data, run_dir, max_steps=2, eval_every=2, report_to=["tensorboard"]),
        progress=False,
    )
    assert result.status == "completed" and result.steps == 2
    events = RunDir(run_dir).read_events()
    assert [e.step for e in events if isinstance(e, TrainStep)] == [1, 2]
    warned = [e for e in events if isinstance(e, Message) and "report_to tensorboard failed" in e.text]
    assert len(warned) == 1 and "(OSError: No space left on device)" in warned[0].text
    assert not any(isinstance(e, TrainStep) and e.step > 1 for e in seen)  # off after its failure
