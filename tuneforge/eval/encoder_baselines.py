"""The cheaper alternatives to fine-tuning an encoder for classification: zero-shot embedding
similarity, k-nearest neighbours and a linear probe, all on the base model frozen.

An encoder cannot answer a chat prompt, so the chat baselines (base, few-shot, RAG) do not fit it.
These use the base as a sentence embedder instead - mean of the last hidden states over the real
tokens, L2-normalised (sentence-transformers' pooling for MiniLM):

- zero_shot_embedding: the label whose name (or description) embeds closest to the text; no labelled data;
- knn: the k nearest training texts vote (the few-shot / RAG analogue: labelled examples looked up, not learned);
- linear_probe: logistic regression on the training split's embeddings (a head on a frozen encoder, fitted
  in closed form-like L-BFGS rather than by SGD through the model).

Each gives a (N, C) probability matrix over the training split's labels (sorted, the classifier head's
order); the prediction is its argmax (knn: ties go to the label with the higher summed similarity) and
the reported loss is the cross-entropy of the gold label under it - zero-shot's probabilities are
softmax(20 x cosine), the scale sentence-transformers trains MiniLM's similarities at; knn's are the
vote shares. A fine-tuned classifier run is scored through its own head (`score_classifier`), so all
of them land in the same `ApproachResult` and get the same intervals, paired differences and verdict.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tuneforge.data.tokenize import Encoded
from tuneforge.data.types import LabelledExample
from tuneforge.errors import ConfigError, DataError, ModelLoadError, Problem
from tuneforge.eval.compare import ApproachResult
from tuneforge.eval.cost import ENCODER_BASELINES
from tuneforge.models.loading import load_tokenizer, pick_device, resolve_model_path

EMBEDDING_SCALE = 20.0  # softmax temperature of zero-shot cosines: sentence-transformers' contrastive scale
EPS = 1e-6  # floor of a gold label's probability in the loss (a knn vote share can be 0)

Predictor = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # (N, D) -> (N, C) probs, (N,) ids


def can_generate(model_name: str | Path) -> bool:
    """Whether the base model (its config.json's architecture) has a generation head. A hub id or an
    architecture we cannot read counts as generative, the chat baselines' default."""
    import transformers

    try:
        folder = Path(resolve_model_path(model_name))
    except ModelLoadError:
        return True  # the model's own loading reports it where it is loaded
    config = folder / "config.json"
    if not config.is_file():
        return True
    arch = (json.loads(config.read_text(encoding="utf-8")).get("architectures") or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    return True if cls is None else bool(cls.can_generate())


class Embedder:
    """Frozen sentence embeddings of a base model: masked mean of the last hidden states, unit length."""

    def __init__(self, model_name: str | Path, max_length: int, batch_size: int = 32):
        from transformers import AutoModel

        self.tokenizer = load_tokenizer(model_name)
        self.device = pick_device()
        try:
            # the loading info is returned, not printed: a checkpoint's pretraining heads are unused here
            model, _ = AutoModel.from_pretrained(resolve_model_path(model_name), output_loading_info=True)
            self.model = model.to(self.device).eval()
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"could not load model '{model_name}' as an embedder",
                [Problem("model.name", str(exc).splitlines()[0][:300], "give a local HF folder or 'minilm'")],
            ) from None
        self.max_length, self.batch_size = max_length, batch_size

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[i : i + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            mask = batch["attention_mask"].to(self.device)  # (B, T)
            hidden = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=mask).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)  # (B, D)
            out.append(F.normalize(pooled.double(), dim=-1).cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size, dtype=torch.float64)

    def tokens(self, texts: Sequence[str]) -> list[int]:
        return [
            len(ids) for ids in self.tokenizer(list(texts), truncation=True, max_length=self.max_length)["input_ids"]
        ]


def label_texts(
    labels: Sequence[str], train: Sequence[LabelledExample], descriptions: dict[str, str], train_file: str
) -> tuple[dict[str, str], dict[str, str]]:
    """(label -> the text zero-shot embeds, label -> where it came from). eval.label_descriptions wins over a
    training example's metadata.label_description, which wins over the label's name (underscores and dashes
    read as spaces: 'account_access' -> 'account access')."""
    problems, from_data = [], {}
    for i, ex in enumerate(train):
        text = ex.metadata.get("label_description")
        if text is None:
            continue
        where = f"{train_file}: example {i} metadata.label_description"
        if not isinstance(text, str) or not text.strip():
            problems.append(Problem(where, "must be a non-empty string", "describe the label in a sentence"))
        elif from_data.setdefault(ex.label, text) != text:
            problems.append(
                Problem(
                    where,
                    f"label '{ex.label}' is described as {from_data[ex.label]!r} earlier and as {text!r} here",
                    "give one description per label (or set eval.label_descriptions)",
                )
            )
    problems += [
        Problem(f"eval.label_descriptions.{name}", "not a label of the training data", f"known labels: {list(labels)}")
        for name in descriptions
        if name not in labels
    ]
    problems += [
        Problem(f"eval.label_descriptions.{name}", "empty description", "describe the label in a sentence")
        for name, text in descriptions.items()
        if not text.strip()
    ]
    if problems:
        raise (DataError if all(p.where.startswith(train_file) for p in problems) else ConfigError)(
            "label descriptions for zero_shot_embedding", problems
        )
    texts, sources = {}, {}
    for name in labels:
        if name in descriptions:
            texts[name], sources[name] = descriptions[name], "eval.label_descriptions"
        elif name in from_data:
            texts[name], sources[name] = from_data[name], "metadata.label_description"
        else:
            texts[name], sources[name] = name.replace("_", " ").replace("-", " "), "label name"
    return texts, sources


def zero_shot_probs(test: torch.Tensor, label_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(EMBEDDING_SCALE * (test @ label_emb.T), dim=-1)  # (N, C)
    return probs, probs.argmax(-1)


def knn_probs(
    train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, n_labels: int, k: int, vote: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vote shares of the k most similar training embeddings (cosine; stable order on equal similarity)."""
    sims = test @ train.T  # (N, M)
    k = min(k, train.shape[0])
    order = torch.argsort(-sims, dim=1, stable=True)[:, :k]  # (N, k)
    top, labels = sims.gather(1, order), train_y[order]  # (N, k) each
    weights = top.clamp(min=0) if vote == "weighted" else torch.ones_like(top)
    weights = torch.where(weights.sum(1, keepdim=True) > 0, weights, torch.ones_like(weights))  # all dissimilar
    votes = torch.zeros(test.shape[0], n_labels, dtype=sims.dtype).scatter_add_(1, labels, weights)  # (N, C)
    sim_sum = torch.zeros_like(votes).scatter_add_(1, labels, top)
    # ties in the vote go to the label whose neighbours are more similar (exact: compare pairs, not sums)
    best = votes.max(1, keepdim=True).values
    tie_break = torch.where(votes == best, sim_sum, torch.full_like(sim_sum, -math.inf))
    return votes / votes.sum(1, keepdim=True), tie_break.argmax(-1)


@dataclass
class Probe:
    """Multinomial logistic regression: softmax(x W + b), fitted on mean cross-entropy + l2 * ||W||^2."""

    weight: torch.Tensor  # (D, C)
    bias: torch.Tensor  # (C,)
    iterations: int
    objective: float
    train_accuracy: float

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.softmax(x @ self.weight + self.bias, dim=-1)
        return probs, probs.argmax(-1)


def fit_probe(x: torch.Tensor, y: torch.Tensor, n_labels: int, steps: int = 300, l2: float = 1e-3) -> Probe:
    """Full-batch L-BFGS from zero weights in float64: the same data gives the same probe, bit for bit.
    The objective is sklearn's LogisticRegression(C=1 / (2 * l2 * N)) divided by C * N (tested against it)."""
    x = x.double()
    weight = torch.zeros(x.shape[1], n_labels, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_labels, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=steps,
        max_eval=2 * steps,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        objective = float(F.cross_entropy(x @ weight + bias, y) + l2 * weight.pow(2).sum())
        accuracy = float(((x @ weight + bias).argmax(-1) == y).double().mean())
    state = opt.state[opt._params[0]]
    return Probe(weight.detach(), bias.detach(), int(state.get("n_iter", 0)), objective, accuracy)


def _result(
    name: str,
    model_ref: str,
    labels: Sequence[str],
    probs: torch.Tensor,
    predicted: torch.Tensor,
    test: Sequence[LabelledExample],
    tokens: list[int],
    seconds: float,
    batched: float,
    latencies: list[float],
) -> ApproachResult:
    ids = {name: i for i, name in enumerate(labels)}
    # a test label the training split never had gets no probability: the floor, as for any missed label
    gold_p = [float(probs[i, ids[ex.label]]) if ex.label in ids else 0.0 for i, ex in enumerate(test)]
    return ApproachResult(
        name,
        model_ref,
        [labels[i] for i in predicted.tolist()],
        [ex.label for ex in test],
        [dict(ex.metadata) for ex in test],
        [-math.log(max(p, EPS)) for p in gold_p],
        [1] * len(test),  # one "answer token": the label
        tokens,
        [0] * len(test),  # nothing generated
        batched,
        seconds,
        latencies,
        [[{"role": "user", "content": ex.text}] for ex in test],
    )


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def _latency(predict: Predictor, embed: Embedder, text: str) -> float:
    """Seconds one request takes alone: embed the text, then classify it."""
    started = time.perf_counter()
    predict(embed([text]))
    return time.perf_counter() - started


def score_embedding_baselines(
    wanted: Sequence[str],
    model_name: str,
    train: Sequence[LabelledExample],
    test: Sequence[LabelledExample],
    ev,
    max_length: int,
    train_file: str,
    say: Callable[[str], None] = print,
) -> tuple[list[ApproachResult], dict[str, Any]]:
    """The embedding baselines in `wanted` (in ENCODER_BASELINES order) and what they were fitted with."""
    chosen = [n for n in ENCODER_BASELINES if n in wanted]
    if not chosen:
        return [], {}
    labels = sorted({ex.label for ex in train})
    embed = Embedder(model_name, max_length, ev.batch_size)
    predictors: dict[str, tuple[Predictor, float]] = {}
    info: dict[str, Any] = {"embedding": f"{model_name}: mean-pooled last hidden states, L2-normalised"}
    if "zero_shot_embedding" in chosen:
        texts, sources = label_texts(labels, train, ev.label_descriptions, train_file)
        label_emb, fit_s = _timed(lambda: embed([texts[n] for n in labels]))
        predictors["zero_shot_embedding"] = (lambda e: zero_shot_probs(e, label_emb), fit_s)
        info["zero_shot_embedding"] = {"label_texts": texts, "sources": sources, "scale": EMBEDDING_SCALE}
    if "knn" in chosen or "linear_probe" in chosen:
        say(f"  embedding {len(train)} training examples")
        train_emb, train_s = _timed(lambda: embed([ex.text for ex in train]))
        train_y = torch.tensor([labels.index(ex.label) for ex in train])
        if "knn" in chosen:
            k, vote = ev.knn_k, ev.knn_vote
            predictors["knn"] = (lambda e: knn_probs(train_emb, train_y, e, len(labels), k, vote), train_s)
            info["knn"] = {"k": min(k, len(train)), "vote": vote, "pool": len(train)}
        if "linear_probe" in chosen:
            probe, fit_s = _timed(lambda: fit_probe(train_emb, train_y, len(labels), ev.probe_steps, ev.probe_l2))
            predictors["linear_probe"] = (probe, train_s + fit_s)
            info["linear_probe"] = {
                "l2": ev.probe_l2,
                "max_steps": ev.probe_steps,
                "iterations": probe.iterations,
                "objective": round(probe.objective, 6),
                "train_accuracy": round(probe.train_accuracy, 4),
                "fit_seconds": round(fit_s, 3),
            }
    texts = [ex.text for ex in test]
    test_emb, embed_s = _timed(lambda: embed(texts))
    tokens = embed.tokens(texts)
    results = []
    for name in chosen:
        predict, fit_s = predictors[name]
        say(f"  {name}: {len(test)} test examples")
        t0 = time.perf_counter()
        probs, predicted = predict(test_emb)
        predict_s = time.perf_counter() - t0
        if ev.latency_samples:
            predict(embed(texts[:1]))  # warm-up: the first call pays one-off costs
        latencies = [_latency(predict, embed, text) for text in texts[: ev.latency_samples]]
        seconds = fit_s + embed_s + predict_s + sum(latencies)
        batched = (embed_s + predict_s) / max(len(test), 1)
        results.append(_result(name, model_name, labels, probs, predicted, test, tokens, seconds, batched, latencies))
    return results, info


@torch.no_grad()
def score_classifier(
    name: str,
    model_ref: str,
    model,
    tokenizer,
    test: Sequence[LabelledExample],
    max_length: int,
    batch_size: int,
    latency_samples: int = 0,
) -> ApproachResult:
    """A fine-tuned classifier through its own head, inputs built as in training (the classification objective's
    truncation and padding); labels from the model's id2label."""
    from tuneforge.objectives.classification import SequenceClassification

    started = time.perf_counter()
    objective, device = SequenceClassification(), next(model.parameters()).device
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    feats = [Encoded(tokenizer(ex.text, truncation=True, max_length=max_length)["input_ids"], [0]) for ex in test]

    def probs_of(chunk: Sequence[Encoded]) -> torch.Tensor:
        batch = {k: v.to(device) for k, v in objective.collate(chunk, tokenizer.pad_token_id).items()}
        return torch.softmax(objective.logits(model, batch).double(), dim=-1).cpu()  # (B, C)

    model.eval()
    t0 = time.perf_counter()
    probs = torch.cat([probs_of(feats[i : i + batch_size]) for i in range(0, len(feats), batch_size)])
    batched = (time.perf_counter() - t0) / max(len(test), 1)
    latencies = []
    if latency_samples and feats:
        probs_of(feats[:1])  # warm-up
    for f in feats[:latency_samples]:  # one request at a time
        t0 = time.perf_counter()
        probs_of([f])
        latencies.append(time.perf_counter() - t0)
    tokens = [len(f.input_ids) for f in feats]
    seconds = time.perf_counter() - started
    return _result(name, model_ref, labels, probs, probs.argmax(-1), test, tokens, seconds, batched, latencies)
