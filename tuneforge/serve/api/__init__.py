"""HTTP routers of the OpenAI-compatible API."""
