"""Retrieval for RAG and similarity-chosen few-shot examples: BM25, MiniLM embeddings, or both.

Every retriever indexes a list of passages once and answers `search(query, k)` with the
best passages first. `hybrid` fuses the BM25 and embedding rankings by reciprocal rank
(Cormack et al. 2009, k=60), which needs no score calibration between the two.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from tuneforge.data.types import Conversation
from tuneforge.errors import DataError, Problem

_WORD = re.compile(r"\w+")
RRF_K = 60


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@dataclass
class Hit:
    index: int  # position in the indexed passages
    score: float
    text: str


class Retriever(Protocol):
    passages: list[str]

    def search(self, query: str, k: int) -> list[Hit]: ...


class BM25Retriever:
    def __init__(self, passages: Sequence[str]):
        from rank_bm25 import BM25Okapi

        self.passages = list(passages)
        self._bm25 = BM25Okapi([words(p) or [""] for p in self.passages])

    def search(self, query: str, k: int) -> list[Hit]:
        scores = self._bm25.get_scores(words(query))  # (N,)
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(int(i), float(scores[i]), self.passages[i]) for i in order]


class EmbeddingRetriever:
    """Cosine similarity of MiniLM sentence embeddings (the model shipped with tuneforge)."""

    def __init__(self, passages: Sequence[str], model: str = "minilm", batch_size: int = 64):
        from sentence_transformers import SentenceTransformer

        from tuneforge.models.loading import resolve_model_path

        self.passages = list(passages)
        self._model = SentenceTransformer(resolve_model_path(model), device="cpu")
        self._matrix = self._embed(self.passages, batch_size)  # (N, D), unit rows

    def _embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        return self._model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)

    def search(self, query: str, k: int) -> list[Hit]:
        scores = self._matrix @ self._embed([query])[0]  # (N,)
        order = np.argsort(-scores, kind="stable")[:k]
        return [Hit(int(i), float(scores[i]), self.passages[i]) for i in order]


class HybridRetriever:
    def __init__(self, passages: Sequence[str]):
        self.passages = list(passages)
        self._parts = (BM25Retriever(passages), EmbeddingRetriever(passages))

    def search(self, query: str, k: int) -> list[Hit]:
        depth = min(len(self.passages), max(4 * k, 20))
        fused: dict[int, float] = {}
        for part in self._parts:
            for rank, hit in enumerate(part.search(query, depth)):
                fused[hit.index] = fused.get(hit.index, 0.0) + 1.0 / (RRF_K + rank + 1)
        best = sorted(fused, key=lambda i: (-fused[i], i))[:k]
        return [Hit(i, fused[i], self.passages[i]) for i in best]


def build_retriever(kind: str, passages: Sequence[str]) -> Retriever:
    if not passages:
        raise DataError(
            "nothing to retrieve from",
            [
                Problem(
                    "eval.rag_docs",
                    "no passages",
                    "point it at a folder of .txt/.md files or leave it empty to use the training split",
                )
            ],
        )
    return {"bm25": BM25Retriever, "embeddings": EmbeddingRetriever, "hybrid": HybridRetriever}[kind](passages)


def conversation_passage(conv: Conversation) -> str:
    """A training conversation as a retrievable passage: the question and its answer."""
    return f"Q: {question_of(conv)}\nA: {conv.reference}"


def question_of(conv: Conversation) -> str:
    users = [m.content for m in conv.prompt_messages if m.role == "user"]
    return users[-1] if users else ""


def read_documents(path: Path, max_words: int = 120) -> list[str]:
    """Passages from a file or folder of .txt/.md documents, cut at paragraphs into <= max_words chunks."""
    path = Path(path)
    files = sorted(
        p for p in (path.rglob("*") if path.is_dir() else [path]) if p.is_file() and p.suffix in (".txt", ".md")
    )
    if not files:
        raise DataError(
            f"no documents in {path}",
            [Problem("eval.rag_docs", f"{path} has no .txt or .md files", "give a folder of text documents")],
        )
    passages: list[str] = []
    for f in files:
        chunk: list[str] = []
        for para in re.split(r"\n\s*\n", f.read_text(encoding="utf-8", errors="replace")):
            para_words = para.split()
            if chunk and len(chunk) + len(para_words) > max_words:
                passages.append(" ".join(chunk))
                chunk = []
            chunk.extend(para_words)
            while len(chunk) > max_words:  # one long paragraph becomes several passages
                passages.append(" ".join(chunk[:max_words]))
                chunk = chunk[max_words:]
        if chunk:
            passages.append(" ".join(chunk))
    return passages
