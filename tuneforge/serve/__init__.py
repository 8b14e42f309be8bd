"""The HTTP service: OpenAI-compatible API, job store, workers, generation, monitoring."""
