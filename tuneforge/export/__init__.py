"""What other tools load next: model cards beside every artifact (and, in time, GGUF)."""
