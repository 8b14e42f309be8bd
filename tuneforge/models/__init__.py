"""Base models: loading (hub id or local folder), tokenizers, chat templates, the demo model."""
