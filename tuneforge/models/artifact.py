"""The typed Artifact of a run: what a run dir (or an artifact folder given directly) holds.

Read once, from the files on disk, and used by loading, export, eval and the service, so none
of them looks at folder names, marker files or peft types itself. Which method wrote the
folder comes from the run's config.yaml when it has one and the folder is in that method's
format; otherwise from the folder's format (the first registered method that recognises it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneforge.errors import ModelLoadError, Problem
from tuneforge.methods.peft_family import peft_type_of
from tuneforge.methods.registry import Method, Serving, artifact_folders, get_method, json_file, methods

# the class-name suffix of a saved task model -> its `models.loading.MODEL_CLASSES` key
_TASK_SUFFIXES = {
    "ForSequenceClassification": "sequence_classification",
    "ForTokenClassification": "token_classification",
    "ForMaskedLM": "masked_lm",
    "ForPreTraining": "pretraining",
    "ForNextSentencePrediction": "next_sentence",
}
_LABELLED_TASKS = ("sequence_classification", "token_classification")


@dataclass(frozen=True)
class Artifact:
    method: str  # the registered method that wrote it
    folder: Path  # the artifact folder itself (run/adapter, run/model, run/bottleneck, or a folder given directly)
    run_dir: Path | None  # the run directory holding config.yaml, when there is one
    base_model: str | None  # the base model name from the run's config.yaml
    task: str  # a `MODEL_CLASSES` key: the head to rebuild (causal_lm, sequence_classification...)
    labels: dict[str, Any] = field(default_factory=dict)  # num_labels, id2label, label2id of a labelled task
    peft_type: str | None = None  # what a PEFT folder declares (LORA, IA3...); None for other formats
    chat_template: bool = False  # the tokenizer saved beside it carries a chat template
    chat_template_name: str | None = None  # the run's model.chat_template (a built-in name or .jinja path), if any
    system_prompt: str = "keep"  # the run's data.system_prompt; generation prompts the same way (its saved tokenizer)

    @property
    def record(self) -> Method:
        return get_method(self.method)

    @property
    def serving(self) -> Serving:
        return self.record.serving

    @property
    def can_merge(self) -> bool:
        return self.record.can_merge

    @property
    def own_prompting(self) -> bool:
        """Prompts render with this artifact's own saved tokenizer, not its base's (a template or policy of its own)."""
        return self.chat_template_name is not None or self.system_prompt != "keep"

    @property
    def standalone(self) -> bool:
        """A whole model folder: it loads without a base."""
        return self.serving is Serving.STANDALONE

    @property
    def mixed_batches(self) -> bool:
        return self.record.mixed_batches

    def base_source(self) -> str:
        """What to load before `Method.load`: the folder itself for a whole model, else the base model."""
        if self.standalone:
            return str(self.folder)
        if self.base_model is None:
            where = self.run_dir / "config.yaml" if self.run_dir else self.folder.parent / "config.yaml"
            raise ModelLoadError(
                f"{self.folder} holds a {self.method} adapter but no config.yaml names its base model",
                [Problem(str(where), "missing", "load the run directory the adapter was trained in")],
            )
        return self.base_model


def find_artifact(path: str | Path) -> Artifact | None:
    """The Artifact of a run dir or artifact folder; None for anything else (a base model folder, a hub id)."""
    path = Path(path)
    located = _locate(path) if path.is_dir() else None
    return _read(*located) if located else None


def read_artifact(path: str | Path) -> Artifact:
    """The Artifact of a run dir or artifact folder; a located ModelLoadError when `path` is neither."""
    artifact = find_artifact(path)
    if artifact is None:
        raise ModelLoadError(
            f"{path} is not a run directory or a fine-tuned artifact folder",
            [
                Problem(
                    str(path),
                    f"no {', '.join(f + '/' for f in artifact_folders())} folder and no adapter files",
                    "pass the run directory of a finished run (its output_dir)",
                )
            ],
        )
    return artifact


def saved_task(folder: Path) -> tuple[str, dict[str, Any]]:
    """(task, label kwargs) of a saved model/adapter folder, from the config.json saved beside it.

    Causal-LM adapters carry no config.json: the default task is causal_lm.
    """
    data = json_file(folder / "config.json")
    arch = (data.get("architectures") or [""])[0]
    task = next((t for suffix, t in _TASK_SUFFIXES.items() if arch.endswith(suffix)), "causal_lm")
    if task not in _LABELLED_TASKS or "id2label" not in data:
        return task, {}
    id2label = {int(k): v for k, v in data["id2label"].items()}
    return task, {"num_labels": len(id2label), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()}}


def _locate(path: Path) -> tuple[Method, Path] | None:
    """(method whose format it is, artifact folder). A whole-model folder given directly counts only as
    a run's own folder (`run/model` beside config.yaml): on its own it is a base model, not a run."""
    registered = methods()
    in_run = (path.parent / "config.yaml").is_file()
    for method in registered:
        if method.serving is Serving.STANDALONE and not (in_run and path.name == method.folder):
            continue
        if method.recognises(path):
            return method, path
    # adapter formats first: they keep a config.json beside them, which a whole-model format also recognises
    for method in sorted(registered, key=lambda m: m.serving is Serving.STANDALONE):
        if method.recognises(path / method.folder):
            return method, path / method.folder
    return None


def _read(found: Method, folder: Path) -> Artifact:
    run_dir = next((d for d in (folder.parent, folder) if (d / "config.yaml").is_file()), None)
    run = _run_config(run_dir / "config.yaml") if run_dir else {}
    method = _run_method(run, folder) or found
    task, labels = saved_task(folder)
    model = run.get("model") if isinstance(run.get("model"), dict) else {}
    data = run.get("data") if isinstance(run.get("data"), dict) else {}
    return Artifact(
        method=method.name,
        folder=folder,
        run_dir=run_dir,
        base_model=model.get("name"),
        task=task,
        labels=labels,
        peft_type=peft_type_of(folder),
        chat_template=_has_chat_template(folder),
        chat_template_name=model.get("chat_template"),
        system_prompt=data.get("system_prompt") or "keep",
    )


def _run_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ModelLoadError(
            f"cannot read the run config {path}", [Problem(str(path), str(exc).splitlines()[0][:200])]
        ) from None
    return data if isinstance(data, dict) else {}


def _run_method(run: dict[str, Any], folder: Path) -> Method | None:
    """The run's own method when the folder is in its format (a LoRA run with use_dora wrote a DoRA folder)."""
    name = (run.get("method") or {}).get("name") if isinstance(run.get("method"), dict) else None
    if name is None:
        return None
    method = get_method(name)  # an unknown name: ConfigError naming method.name and the registered ones
    return method if method.recognises(folder) else None


def _has_chat_template(folder: Path) -> bool:
    return (folder / "chat_template.jinja").is_file() or bool(
        json_file(folder / "tokenizer_config.json").get("chat_template")
    )
