"""Shared fixtures: tiny real models (built with from_config, tokenizer trained locally) and data.

TUNEFORGE_HOME points at a fresh temporary folder for the whole session, so tests never
read or write the user's cache.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ["TUNEFORGE_HOME"] = tempfile.mkdtemp(prefix="tuneforge-test-home-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tuneforge.data.synthetic import general_corpus, support_desk_dataset
    from tuneforge.models.demo import build_tokenizer

    texts = general_corpus(300, seed=1) + [m.content for c in support_desk_dataset(300, seed=1) for m in c.messages]
    return build_tokenizer(texts, vocab_size=512)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A 2-layer, hidden-64 Llama with a locally trained BPE tokenizer and ChatML template (HF folder)."""
    from tuneforge.models.demo import build_tiny_llama, save_model_folder

    model = build_tiny_llama(tiny_tokenizer, hidden=64, layers=2, heads=4, max_positions=256, seed=0)
    return save_model_folder(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture
def support_data(tmp_path) -> dict[str, Path]:
    """Small train/validation/test support-desk chat JSONL files (48/8/8 conversations)."""
    from tuneforge.data.readers import write_jsonl
    from tuneforge.data.synthetic import support_desk_dataset

    examples = support_desk_dataset(64, seed=3)
    paths = {}
    for name, rows in (("train", examples[:48]), ("validation", examples[48:56]), ("test", examples[56:])):
        paths[name] = tmp_path / "data" / f"{name}.jsonl"
        write_jsonl(rows, paths[name])
    return paths
