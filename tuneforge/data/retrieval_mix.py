"""Retrieval-augmented fine-tuning (RAFT, Zhang et al. 2024): `data.retrieval` puts passages in the training prompts.

Each training conversation's last question is sent to a retriever (`tuneforge.eval.retrieval`: BM25, MiniLM or
both) over `data.retrieval.corpus`. With probability `p_oracle` its prompt holds the top `k - distractors`
retrieved passages (the oracle: the ones that should hold the answer) and `distractors` random other passages;
otherwise it holds `k` random passages only, so the model also learns to answer when retrieval fails. Passages are
shuffled (the answer is not always in passage [1]) and rendered exactly as `eval.baselines.RAG` does, so the
`fine_tuned+rag` approach of `tuneforge eval` prompts the fine-tune as it was trained. With corpus 'train', an
example's own passage (and any passage with the same text) is never retrieved for it: at test time the question is
not in the corpus either.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

from tuneforge.config import RetrievalSection
from tuneforge.data.types import Conversation
from tuneforge.errors import ConfigError, Problem

WHERE = "data.retrieval"


def raft_corpus(section: RetrievalSection, train: list[Conversation]) -> tuple[list[str], bool]:
    """The passages to retrieve from, and whether they are the training split (one passage per example, in order)."""
    from tuneforge.eval.retrieval import conversation_passage, read_documents

    if section.corpus == "train":
        return [conversation_passage(c) for c in train], True
    path = Path(section.corpus)
    if not path.exists():
        raise ConfigError(
            f"{WHERE}.corpus: {path} not found",
            [
                Problem(
                    f"{WHERE}.corpus",
                    f"no such file or folder: {path}",
                    "give a file or folder of .txt/.md documents, or 'train' for the training split",
                )
            ],
        )
    return read_documents(path), False


def check_chats(examples: list, where: str) -> None:
    wrong = [i for i, ex in enumerate(examples) if not isinstance(ex, Conversation)]
    if wrong:
        raise ConfigError(
            f"{where} needs chat examples",
            [
                Problem(
                    where,
                    f"{len(wrong)} of {len(examples)} training examples are not conversations "
                    f"(first: example {wrong[0]}, {type(examples[wrong[0]]).__name__})",
                    "use chat or prompt/completion data, or remove this section",
                )
            ],
        )


def add_passages(
    examples: list[Conversation],
    section: RetrievalSection,
    tokenizer,
    max_length: int,
    seed: int,
    corpus: tuple[list[str], bool],
    split: str = "train",
) -> tuple[list[Conversation], dict[str, Any]]:
    """The examples with passages in their prompts, and the counts the manifest reports."""
    from tuneforge.eval.baselines import RAG, _split_system, prompt_tokens
    from tuneforge.eval.retrieval import build_retriever, question_of

    passages, is_train = corpus
    retriever = build_retriever(section.retriever, passages)
    own = is_train and split == "train"  # example i is passage i: never its own oracle
    counts = {"examples": len(examples), "with_oracle": 0, "retrieved": 0, "distractors": 0, "cut_for_length": 0}
    same_text: dict[str, set[int]] = {}
    for j, p in enumerate(passages if own else []):
        same_text.setdefault(p, set()).add(j)
    out = []
    for i, conv in enumerate(examples):
        rng = random.Random(f"{seed}:{split}:{i}")
        banned = same_text[passages[i]] if own else set()
        last = conv.last_assistant_index()
        oracle = rng.random() < section.p_oracle
        want = section.k - section.distractors if oracle else 0
        depth = min(len(passages), want + len(banned))
        retrieved = [h.index for h in retriever.search(question_of(conv), depth) if h.index not in banned][:want]
        others = [j for j in range(len(passages)) if j not in banned and j not in retrieved]
        extra = rng.sample(others, min(len(others), section.k - len(retrieved)))
        chosen = [(j, True) for j in retrieved] + [(j, False) for j in extra]
        rng.shuffle(chosen)
        prompt = conv.prompt_messages
        after = conv.messages[last:] if last is not None else []
        system, rest = _split_system(list(prompt))
        instructions = "\n".join(m.content for m in system)
        answer = prompt_tokens(tokenizer, after) if after else 0  # an upper bound of the answer's own tokens
        while (
            chosen
            and prompt_tokens(tokenizer, RAG._render(instructions, [passages[j] for j, _ in chosen], rest)) + (answer)
            > max_length
        ):
            dropped = next((n for n in range(len(chosen) - 1, -1, -1) if not chosen[n][1]), len(chosen) - 1)
            chosen.pop(dropped)  # distractors go first, then the last retrieved passage
            counts["cut_for_length"] += 1
        counts["with_oracle"] += oracle and any(r for _, r in chosen)
        counts["retrieved"] += sum(r for _, r in chosen)
        counts["distractors"] += sum(not r for _, r in chosen)
        messages = RAG._render(instructions, [passages[j] for j, _ in chosen], rest) + list(after)
        out.append(dataclasses.replace(conv, messages=messages, metadata=dict(conv.metadata)))
    counts["passages_in_prompts"] = counts["retrieved"] + counts["distractors"]
    return out, counts


def describe(section: RetrievalSection, corpus: tuple[list[str], bool], splits: dict[str, dict[str, Any]]) -> dict:
    return {
        "corpus": section.corpus,
        "passages_indexed": len(corpus[0]),
        "retriever": section.retriever,
        "k": section.k,
        "distractors": section.distractors,
        "p_oracle": section.p_oracle,
        **splits,
    }


def mix_for_training(cfg, train: list, val: list, tokenizer) -> tuple[list, list, dict[str, Any]]:
    """`data.retrieval` (passages in the train and validation prompts), then `data.replay` (general examples in
    train only); returns both splits and what the manifest's `datasets` section reports about them."""
    from tuneforge.data.replay import mix_replay

    report: dict[str, Any] = {}
    if cfg.data.retrieval is not None:
        section = cfg.data.retrieval
        check_chats(train, WHERE)
        check_chats(val, WHERE)
        corpus = raft_corpus(section, train)
        args = (section, tokenizer, cfg.model.max_length, cfg.train.seed, corpus)
        train, train_counts = add_passages(train, *args, split="train")
        splits = {"train": train_counts}
        if val:
            val, splits["validation"] = add_passages(val, *args, split="validation")
        report["retrieval"] = describe(section, corpus, splits)
    if cfg.data.replay is not None:
        train, report["replay"] = mix_replay(train, cfg.data.replay)
    return train, val, report
