"""OpenAI's `method: reinforcement` in /v1/fine_tuning/jobs, driven by the official `openai` client: RFT prompt
files accepted at upload, OpenAI's grader objects translated to tuneforge's (score_model content parts, a multi
grader's sub-graders), a bad grader a 400 naming its field, python graders and judge endpoints refused from remote
callers unless the operator allows unsafe options, the hyperparameters mapped to grpo, and a job run through the
runner whose events carry the reward metrics."""

from __future__ import annotations

import json

import openai
import pytest

from helpers import tiny_service
from tuneforge.errors import ConfigError
from tuneforge.serve import jobs, keys
from tuneforge.serve.jobspec_rft import ReinforcementDetail, reinforcement_options, translate_grader

FACT = {
    "type": "string_check",
    "name": "fact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "ilike",
}
PRODUCTS = ["Cam Pro", "Soundbar", "Light Strip", "Hub", "Doorbell", "Thermostat"]


def _rft(path, n: int, offset: int = 0):
    rows = [
        {
            "messages": [{"role": "user", "content": f"What warranty does the {PRODUCTS[i % 6]} have? ({i})"}],
            "answer": f"{i % 3 + 1} year",
        }
        for i in range(offset, offset + n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _method(grader=None, **hyper):
    return {"type": "reinforcement", "reinforcement": {"grader": grader or FACT, "hyperparameters": hyper}}


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    with tiny_service(home) as (url, store, _app, settings):
        _, key = keys.create_key(store, "team")
        c = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        train = c.files.create(file=_rft(home / "train.jsonl", 12).open("rb"), purpose="fine-tune")
        val = c.files.create(file=_rft(home / "val.jsonl", 4, offset=100).open("rb"), purpose="fine-tune")
        chats = home / "chats.jsonl"
        chats.write_text(
            "".join(
                json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]})
                + "\n"
                for i in range(12)
            )
        )
        chat = c.files.create(file=chats.open("rb"), purpose="fine-tune")
        yield {"client": c, "store": store, "settings": settings, "train": train, "val": val, "chat": chat}


def _refused(c, **kw) -> dict:
    with pytest.raises(openai.BadRequestError) as exc:
        c.fine_tuning.jobs.create(model="demo", **kw)
    return exc.value.body


def test_rft_files_are_accepted_and_checked_against_the_method(svc):
    c = svc["client"]
    assert c.files.retrieve(svc["train"].id).status == "processed"
    body = _refused(c, training_file=svc["chat"].id, method=_method())
    assert body["param"] == "training_file" and "reinforcement trains on prompts" in body["message"]
    body = _refused(c, training_file=svc["train"].id)  # supervised on prompts without answers
    assert body["param"] == "training_file" and "nothing for supervised to learn" in body["message"]


@pytest.mark.parametrize(
    ("grader", "hyper", "param", "says"),
    [
        ({**FACT, "operation": "contains"}, {}, "method.reinforcement.grader.operation", "'eq'"),
        ({k: v for k, v in FACT.items() if k != "reference"}, {}, "method.reinforcement.grader.reference", "required"),
        ({**FACT, "name": ""}, {}, "method.reinforcement.grader.name", "required"),
        ({"type": "label_model", "name": "x"}, {}, "method.reinforcement.grader.type", "not supported yet"),
        ({"type": "python", "name": "p", "source": "def grade(s, i): return 1"}, {}, "grader.type", "arbitrary code"),
        (
            {"type": "multi", "name": "m", "calculate_output": "a", "graders": {"a": {**FACT, "reference": "{{x"}}},
            {},
            "method.reinforcement.grader.graders.a.reference",
            "",
        ),
        (
            {
                "type": "score_model",
                "name": "judge",
                "model": "demo",
                "base_url": "http://10.0.0.1/v1",
                "input": [{"role": "user", "content": "{{sample.output_text}}"}],
            },
            {},
            "method.reinforcement.grader.base_url",
            "worker",
        ),
        (
            {
                "type": "score_model",
                "name": "judge",
                "model": "demo",
                "input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}],
            },
            {},
            "method.reinforcement.grader.input[0].content[0]",
            "judges read text",
        ),
        (FACT, {"compute_multiplier": 0}, "method.reinforcement.hyperparameters.compute_multiplier", "greater than"),
        (FACT, {"eval_interval": 2}, "method.reinforcement.hyperparameters.eval_interval", "no validation_file"),
        (FACT, {"reasoning_effort": "high"}, "method.reinforcement.hyperparameters.reasoning_effort", "reasoning"),
    ],
)
def test_a_bad_grader_or_hyperparameter_is_a_400_naming_the_field(svc, grader, hyper, param, says):
    body = _refused(svc["client"], training_file=svc["train"].id, method=_method(grader, **hyper))
    assert body["param"].endswith(param), body
    assert says in body["message"], body


def test_python_graders_from_tuneforge_options_are_refused_too_and_allowed_by_the_operator(svc):
    c, settings = svc["client"], svc["settings"]
    python = {"type": "python", "name": "p", "source": "def grade(sample, item):\n    return 1.0\n"}
    body = _refused(
        c, training_file=svc["train"].id, method=_method(), extra_body={"tuneforge": {"eval": {"graders": [python]}}}
    )
    assert body["param"] == "tuneforge.eval.graders[0].type" and "arbitrary code" in body["message"]
    settings.allow_unsafe_job_options = True
    try:
        job = c.fine_tuning.jobs.create(model="demo", training_file=svc["train"].id, method=_method(python))
    finally:
        settings.allow_unsafe_job_options = False
    assert job.method.reinforcement.grader.type == "python"
    c.fine_tuning.jobs.cancel(job.id)


def test_openai_wire_shapes_translate_to_tuneforge_graders():
    judge = {
        "type": "score_model",
        "name": "judge",
        "model": "demo",
        "input": [
            {"type": "message", "role": "system", "content": {"type": "input_text", "text": "Rate 0-10."}},
            {"role": "user", "content": [{"type": "input_text", "text": "{{sample.output_text}}"}]},
        ],
        "range": [0, 10],
        "sampling_params": {"temperature": None, "seed": 3},
    }
    g, problems = translate_grader(judge, "g", allow_unsafe=False)
    assert problems == []
    assert g["input"] == [
        {"role": "system", "content": "Rate 0-10."},
        {"role": "user", "content": "{{sample.output_text}}"},
    ]
    assert g["sampling_params"] == {"seed": 3}
    single = {"type": "multi", "name": "m", "calculate_output": "fact", "graders": FACT}  # the SDK's one-grader form
    g, problems = translate_grader(single, "g", allow_unsafe=False)
    assert problems == [] and list(g["graders"]) == ["fact"]
    detail = ReinforcementDetail(grader=FACT)
    hyper = {"compute_multiplier": 2.0, "eval_samples": 3, "eval_interval": 7}
    out = reinforcement_options(detail, hyper, {"grpo": {"max_new_tokens": 8}}, allow_unsafe=False)
    assert out["objective"] == "grpo" and out["train"]["eval_every"] == 7
    assert out["grpo"] == {"max_new_tokens": 8, "graders": [FACT], "group_size": 8, "eval_samples": 3}
    with pytest.raises(ConfigError) as err:
        reinforcement_options(detail, hyper, {"grpo": {"graders": [FACT]}}, allow_unsafe=False)
    assert err.value.problems[0].where == "tuneforge.grpo.graders"


@pytest.mark.slow
def test_reinforcement_job_trains_grpo_and_its_events_carry_the_rewards(svc):
    from tuneforge.serve.runner import _train

    c, store = svc["client"], svc["store"]
    job = c.fine_tuning.jobs.create(
        model="demo",
        training_file=svc["train"].id,
        validation_file=svc["val"].id,
        method=_method(batch_size=2, n_epochs=1, compute_multiplier=0.5, eval_interval=2, eval_samples=2),
        extra_body={
            "tuneforge": {
                "model": {"max_length": 64},
                "train": {"max_steps": 2, "log_every": 1, "save_every": 2},
                "grpo": {"max_new_tokens": 4},
            }
        },
    )
    assert job.method.type == "reinforcement" and job.method.reinforcement.grader.operation == "ilike"
    hp = job.method.reinforcement.hyperparameters
    assert (hp.compute_multiplier, hp.eval_interval, hp.eval_samples) == (0.5, 2, 2)
    for _ in range(100):  # validate_job_files runs after the response
        if c.fine_tuning.jobs.retrieve(job.id).status == "queued":
            break
    claimed = jobs.claim_next_job(store, "test-worker")
    assert claimed is not None and claimed.id == job.id
    _train(store, svc["settings"], claimed, should_stop=lambda: False)
    done = c.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded", done.error
    data = [e.data for e in c.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    train = [d for d in data if "train_loss" in d]
    valid = [d for d in data if "valid_loss" in d]
    assert len(train) == 2 and valid
    for d in train:
        assert {"train_reward_mean", "train_reward_std", "train_kl", "train_completion_length"} <= d.keys(), d
        assert 0 <= d["train_grader/fact"] <= 1 and 0 <= d["train_zero_advantage_groups"] <= 1
        assert d["train_reward_mean"] == pytest.approx(d["train_grader/fact"], abs=1e-6)  # one grader, weight 1
    assert all("valid_reward_mean" in d and "valid_grader/fact" in d for d in valid)
