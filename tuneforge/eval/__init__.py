"""Evaluation: metrics, baselines, comparison reports."""
