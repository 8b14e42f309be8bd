"""Evaluation: was fine-tuning worth it?

metrics (task metrics), bootstrap (intervals), retrieval (BM25 / MiniLM), baselines (zero-shot,
few-shot and RAG prompts), compare (score one approach), slices, forgetting, cost, verdict,
report (HTML), evaluate (`tuneforge eval`: all of it on one test split -> eval.json).
"""
