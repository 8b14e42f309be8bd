"""How parameters are adapted: one registry, name -> the Method record (see `registry.py`)."""

from tuneforge.methods.registry import available_methods, get_method, trainable_parameters

__all__ = ["available_methods", "get_method", "trainable_parameters"]
