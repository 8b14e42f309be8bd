"""Replay against forgetting: `data.replay: {source, share}` mixes general examples into the training split.

`share` is the replayed examples' share of what is trained on: n_task task examples get
round(share * n_task / (1 - share)) replayed ones, drawn without replacement (seeded) from the source:
'demo-general' (generated general chats, `data.synthetic.general_replay`) or a file of examples of the kind
the training split holds. The counts go into manifest.json (`datasets.replay`); the validation split stays
task-only, so validation loss still measures the task.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from tuneforge.config import ReplaySection
from tuneforge.errors import ConfigError, Problem

WHERE = "data.replay"
DEMO_GENERAL = "demo-general"


def replay_count(n_task: int, share: float) -> int:
    return round(share * n_task / (1 - share))


def mix_replay(train: list, section: ReplaySection) -> tuple[list, dict[str, Any]]:
    """The training examples followed by the replayed ones, and the counts the manifest reports."""
    from tuneforge.data.synthetic import general_replay

    n = replay_count(len(train), section.share)
    if section.source == DEMO_GENERAL:
        replayed = general_replay(n, section.seed)
    else:
        pool = _read_source(Path(section.source))
        kinds = {type(ex).__name__ for ex in train}
        wrong = [i for i, ex in enumerate(pool) if type(ex).__name__ not in kinds]
        if wrong:
            raise ConfigError(
                f"{WHERE}.source: examples of another kind than the training data",
                [
                    Problem(
                        f"{WHERE}.source",
                        f"{len(wrong)} of {len(pool)} examples in {section.source} are not "
                        f"{' or '.join(sorted(kinds))} (first: example {wrong[0]}, {type(pool[wrong[0]]).__name__})",
                        "give examples of the kind the training split holds",
                    )
                ],
            )
        if len(pool) < n:
            raise ConfigError(
                f"{WHERE}: not enough examples to replay",
                [
                    Problem(
                        f"{WHERE}.share",
                        f"share {section.share} of {len(train)} training examples needs {n} replayed examples; "
                        f"{section.source} holds {len(pool)}",
                        f"lower data.replay.share to at most {len(pool) / (len(train) + len(pool)):.3f} "
                        "or give a larger source",
                    )
                ],
            )
        replayed = random.Random(section.seed).sample(pool, n)
    return list(train) + replayed, {
        "source": section.source,
        "share": section.share,
        "task_examples": len(train),
        "replayed_examples": len(replayed),
        "share_actual": round(len(replayed) / (len(train) + len(replayed)), 6) if replayed else 0.0,
    }


def _read_source(path: Path) -> list:
    from tuneforge.data.readers import read_examples

    if not path.exists():
        raise ConfigError(
            f"{WHERE}.source: {path} not found",
            [
                Problem(
                    f"{WHERE}.source",
                    f"no such file: {path}",
                    f"give a data file of general examples, or '{DEMO_GENERAL}' for generated general chats",
                )
            ],
        )
    return read_examples(path)  # its format detected: it need not be the training file's
