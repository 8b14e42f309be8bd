"""tuneforge: fine-tune language models on your own data, and prove it was worth it."""

__version__ = "0.1.0"
