"""Score chat models on held-out conversations: loss/perplexity and generated-answer metrics."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tuneforge.data.types import Conversation
from tuneforge.eval.metrics import exact_match, token_f1
from tuneforge.models.generate import generate_batch
from tuneforge.objectives import get_objective
from tuneforge.train.recipe import evaluate_loss


def evaluate_chat_model(model, tokenizer, conversations: list[Conversation], max_new_tokens: int = 64,
                        batch_size: int = 16, max_length: int = 512) -> dict[str, Any]:
    """Loss and perplexity on the reference answers; exact match and token F1 of greedy answers."""
    objective = get_objective("sft")
    feats = objective.encode(conversations, tokenizer, max_length)
    device = next(model.parameters()).device
    loss = evaluate_loss(model, objective, feats, batch_size, tokenizer.pad_token_id, device)
    predictions = []
    for i in range(0, len(conversations), batch_size):
        chunk = conversations[i:i + batch_size]
        prompts = [[{"role": m.role, "content": m.content} for m in c.prompt_messages] for c in chunk]
        predictions += [r.text for r in generate_batch(model, tokenizer, prompts, max_new_tokens)]
    references = [c.reference for c in conversations]
    n = max(len(conversations), 1)
    return {
        "metrics": {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "exact_match": sum(exact_match(p, r) for p, r in zip(predictions, references)) / n,
            "token_f1": sum(token_f1(p, r) for p, r in zip(predictions, references)) / n,
        },
        "predictions": [{"prompt": c.prompt_messages[-1].content, "reference": r, "prediction": p, **c.metadata}
                        for c, p, r in zip(conversations, predictions, references)],
    }


def write_predictions(rows: list[dict[str, Any]], path: Path) -> None:
    import json

    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
