"""Data: readers per format -> one example type; validation, cleaning, splits, tokenization."""
