"""How an OpenAI fine-tuning job request becomes a run config: DPO's beta reaches train.dpo_beta."""

from __future__ import annotations

from tuneforge.serve.jobspec import MethodSpec, build_config, check_method, resolve_hyperparameters


def dpo_config(tmp_path, beta):
    method = MethodSpec.model_validate({"type": "dpo", "dpo": {"hyperparameters": {"beta": beta}}})
    assert check_method(method) == []
    hyper = resolve_hyperparameters(method.dpo.hyperparameters, 40, "lora", "dpo")
    cfg = build_config(
        base_model="demo",
        train_path=tmp_path / "t.jsonl",
        validation_path=None,
        output_dir=tmp_path / "run",
        method_type="dpo",
        hyper=hyper,
        seed=1,
        options={},
    )
    return hyper, cfg


def test_dpo_beta_from_the_request_reaches_the_run_config(tmp_path):
    hyper, cfg = dpo_config(tmp_path, 0.3)
    assert hyper["beta"] == 0.3 and cfg.objective == "dpo" and cfg.train.dpo_beta == 0.3
    hyper, cfg = dpo_config(tmp_path, "auto")
    assert hyper["beta"] == 0.1 and cfg.train.dpo_beta == 0.1


def test_bad_beta_is_named():
    problems = check_method(MethodSpec.model_validate({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}))
    assert (
        problems and problems[0].where == "method.dpo.hyperparameters.beta" and "greater than 0" in problems[0].message
    )
    problems = check_method(
        MethodSpec.model_validate({"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.2}}})
    )
    assert problems and "dpo only" in problems[0].message
