"""What is learned: each objective turns examples into features, batches and a loss.

An objective is a small object (see `base.Objective`); `get_objective(name)` builds a fresh
one per run, because labelled objectives fix their label set from that run's training data.
Methods (how parameters are adapted) are independent of objectives.
"""

from __future__ import annotations

from collections.abc import Callable

from tuneforge.config import FUSED_LOSS_OBJECTIVES, OBJECTIVE_OPTIONS, RunConfig
from tuneforge.errors import ConfigError, Problem
from tuneforge.objectives.base import Objective
from tuneforge.objectives.classification import SequenceClassification
from tuneforge.objectives.dpo import DirectPreference
from tuneforge.objectives.encoder import MaskedLM, NextSentence
from tuneforge.objectives.grpo import GroupRelative
from tuneforge.objectives.kto import KahnemanTversky
from tuneforge.objectives.lm import CausalLM, SupervisedChat
from tuneforge.objectives.tokens import TokenClassification

_OBJECTIVES: dict[str, Callable[[], Objective]] = {}


def register_objective(factory: Callable[[], Objective]) -> Callable[[], Objective]:
    _OBJECTIVES[factory().name] = factory
    return factory


def get_objective(name: str, **options) -> Objective:
    if name not in _OBJECTIVES:
        raise ConfigError(
            f"unknown objective '{name}'",
            [Problem("objective", f"'{name}' is not registered", f"use one of {sorted(_OBJECTIVES)}")],
        )
    return _OBJECTIVES[name](**options)


def objective_for(cfg: RunConfig) -> Objective:
    """The run's objective with its train.* options (train.dpo_beta, train.kto_beta, train.mlm_probability...)."""
    options = {
        argument: getattr(cfg.train, key)
        for key, (name, argument) in OBJECTIVE_OPTIONS.items()
        if name == cfg.objective
    }
    if cfg.objective == "sft":  # how system messages meet the chat template
        options["system_prompt"] = cfg.data.system_prompt
    if cfg.objective == "clm":  # group_texts blocks, or whole documents
        options["text_blocks"] = cfg.data.text_blocks
    if cfg.objective in FUSED_LOSS_OBJECTIVES:  # the LM head's loss in chunks
        options["fused_loss"] = cfg.train.fused_loss
    if cfg.objective == "grpo":  # sampling, reward and loss settings: the grpo section
        options["settings"] = cfg.grpo
    return get_objective(cfg.objective, **options)


for _factory in (
    SupervisedChat,
    CausalLM,
    SequenceClassification,
    TokenClassification,
    MaskedLM,
    NextSentence,
    DirectPreference,
    KahnemanTversky,
    GroupRelative,
):
    register_objective(_factory)
