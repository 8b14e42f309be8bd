"""The Method record and the Artifact are the one owner of method-specific knowledge.

Every registered method round-trips (apply -> save -> Artifact -> load) with the Artifact's
fields right; the config's `method:` union is the registry; a method registered by a test
(one definition and one `register` call) is parsed, trained, saved, found and loaded like a
built-in one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, get_args

import pytest
import torch
from pydantic import Field
from safetensors.torch import load_file, save_file

from tuneforge import config as config_module
from tuneforge.config import DataSection, ModelSection, RunConfig, validate_config
from tuneforge.errors import ConfigError, ModelLoadError
from tuneforge.methods import registry
from tuneforge.methods.registry import (
    Method,
    MethodConfig,
    Serving,
    get_method,
    has_file,
    method_of,
    reference_context,
    register,
)
from tuneforge.models.artifact import find_artifact, read_artifact
from tuneforge.models.loading import load_for_inference, load_model

OPTIONS = {
    "freeze": {"top_layers": 1},
    "prompt_tuning": {"num_virtual_tokens": 4},
    "prefix_tuning": {"num_virtual_tokens": 4},
    "adapter": {"bottleneck": 8},
    "lora": {"r": 4},
    "dora": {"r": 4},
    "head+lora": {"r": 4},
}
LABELS = {"id2label": {0: "no", 1: "yes"}, "label2id": {"no": 0, "yes": 1}, "num_labels": 2}
# qlora needs a bitsandbytes-quantizable base; test_methods_matrix round-trips it on one
ROUND_TRIP = [name for name in registry.available_methods() if name != "qlora"]


def _section(name: str) -> MethodConfig:
    return get_method(name).config.model_validate({"name": name, **OPTIONS.get(name, {})})


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, -ids.shape[1] :].float()


def test_method_union_is_the_registry():
    union = get_args(get_args(config_module.MethodSection)[0])
    assert set(union) == set(registry.method_configs()) and len(union) == len(registry.available_methods())
    for method in registry.methods():
        assert get_args(method.config.model_fields["name"].annotation) == (method.name,)
        assert (
            validate_config(
                {
                    "data": {"train": "x"},
                    "method": {"name": method.name, **OPTIONS.get(method.name, {})},
                    "objective": "classification" if method.needs_new_head else "sft",
                },
                check_files=False,
            ).method.name
            == method.name
        )
    assert registry.artifact_folders() == ("model", "adapter", "bottleneck")
    assert sorted(registry.reference_methods()) == [
        "adapter",
        "dora",
        "ia3",
        "lora",
        "prefix_tuning",
        "prompt_tuning",
        "qlora",
    ]
    with pytest.raises(ConfigError, match="reference model"):
        validate_config({"data": {"train": "x"}, "objective": "dpo", "method": {"name": "full"}}, check_files=False)


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_every_method_round_trips_through_its_artifact(name, tiny_model_dir, tiny_tokenizer, tmp_path):
    method = get_method(name)
    head = LABELS if method.needs_new_head else {}
    task = "sequence_classification" if head else "causal_lm"
    torch.manual_seed(0)
    model = method.apply(load_model(tiny_model_dir, torch.float32, task=task, **head), _section(name))
    assert method_of(model) is method
    with torch.no_grad():  # far from the base, so a load that drops the update would show
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = RunConfig(
        model=ModelSection(name=str(tiny_model_dir)),
        data=DataSection(train="x.jsonl"),
        method=_section(name),
        objective="classification" if head else "sft",
    )
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    folder = method.save(model, run_dir)
    tiny_tokenizer.save_pretrained(folder)

    artifact = read_artifact(run_dir)
    assert (artifact.method, artifact.folder, artifact.run_dir) == (name, run_dir / method.folder, run_dir)
    assert (
        folder == artifact.folder
        and artifact.serving is method.serving
        and artifact.can_merge == (method.merge is not None)
    )
    assert artifact.base_model == str(tiny_model_dir) and artifact.task == task
    assert artifact.labels == (head if head else {})
    assert (artifact.peft_type is not None) == (method.folder == "adapter")
    assert artifact.chat_template == bool(tiny_tokenizer.chat_template)
    assert read_artifact(artifact.folder) == artifact  # the folder given directly is the same artifact

    labels = {} if artifact.standalone else artifact.labels
    loaded = method.load(
        load_model(artifact.base_source(), torch.float32, task=artifact.task, **labels), artifact.folder
    )
    assert method_of(loaded) is method
    ids = tiny_tokenizer(["The printer in room four jams every morning."], return_tensors="pt")["input_ids"]
    torch.testing.assert_close(_logits(loaded, ids), _logits(model, ids), rtol=1e-4, atol=1e-4)
    if method.reference is not None:  # the reference context is the base itself
        base = load_model(tiny_model_dir, torch.float32, task=task, **head)
        with reference_context(loaded):
            torch.testing.assert_close(_logits(loaded, ids), _logits(base, ids), rtol=1e-4, atol=1e-4)


def test_a_folder_that_is_not_an_artifact_is_a_located_error(tiny_model_dir, tmp_path):
    assert find_artifact(tiny_model_dir) is None  # a base model folder is not a run
    with pytest.raises(ModelLoadError) as info:
        read_artifact(tmp_path)
    assert info.value.problems[0].where == str(tmp_path) and "adapter/" in info.value.problems[0].message


def test_a_model_without_an_adapter_has_no_reference(tiny_model_dir):
    model = get_method("full").apply(load_model(tiny_model_dir, torch.float32), _section("full"))
    with pytest.raises(ConfigError) as info:
        reference_context(model)
    assert info.value.problems[0].where == "method.name" and "lora" in info.value.problems[0].fix


# ---- a method defined in one place and registered with one call
class ScaleMethod(MethodConfig):
    name: Literal["toy_scale"] = "toy_scale"
    init: float = Field(1.0, gt=0, description="Initial value of the trained output scale.")


def _apply_scale(model, cfg: ScaleMethod):
    for p in model.parameters():
        p.requires_grad_(False)
    model.toy_scale = torch.nn.Parameter(torch.tensor(cfg.init))  # one trained scalar on the final norm's output
    model.model.norm.register_forward_hook(lambda module, args, out: out * model.toy_scale)
    return model


def _save_scale(model, run_dir: Path) -> Path:
    out = run_dir / "toy"
    out.mkdir(parents=True, exist_ok=True)
    save_file({"toy_scale": model.toy_scale.detach().clone()}, str(out / "toy_weights.safetensors"))
    (out / "toy_config.json").write_text(json.dumps({"base": model.config._name_or_path}))
    return out


def _load_scale(base, folder: Path):
    model = _apply_scale(base, ScaleMethod())
    model.toy_scale.data.copy_(load_file(str(folder / "toy_weights.safetensors"))["toy_scale"])
    return model


@pytest.fixture
def toy_method():
    method = register(
        Method(
            "toy_scale", ScaleMethod, "toy", _apply_scale, _save_scale, has_file("toy_config.json"), restore=_load_scale
        )
    )
    yield method
    registry._METHODS.pop(method.name)
    config_module._refresh_method_union()


def test_a_registered_method_is_parsed_trained_saved_and_loaded(toy_method, tiny_model_dir, support_data, tmp_path):
    from helpers import make_config
    from tuneforge.train import train

    assert "toy" in registry.artifact_folders()
    with pytest.raises(ConfigError) as info:
        validate_config({"data": {"train": "x"}, "method": {"name": "toy_scale", "nope": 1}}, check_files=False)
    assert "method.nope" in info.value.problems[0].where
    parsed = validate_config({"data": {"train": "x"}, "method": {"name": "toy_scale", "init": 0.5}}, check_files=False)
    assert isinstance(parsed.method, ScaleMethod) and parsed.method.init == 0.5

    cfg = make_config(tiny_model_dir, support_data, tmp_path / "run", method=ScaleMethod(), max_steps=3, lr=5e-2)
    result = train(cfg, progress=False)
    artifact = read_artifact(result.run_dir)
    assert (artifact.method, artifact.folder.name, artifact.serving) == ("toy_scale", "toy", Serving.OWN_COPY)
    trained = load_file(str(artifact.folder / "toy_weights.safetensors"))["toy_scale"].item()
    assert trained != 1.0  # training moved the one trained weight
    model, _ = load_for_inference(result.run_dir, device=torch.device("cpu"))
    assert method_of(model) is toy_method and model.toy_scale.item() == pytest.approx(trained)
