"""How parameters are adapted: one registry, name -> apply(model, method_config)."""

from tuneforge.methods import builtin as _builtin  # noqa: F401  (registers the built-in methods)
from tuneforge.methods.registry import available_methods, get_method, trainable_parameters

__all__ = ["available_methods", "get_method", "trainable_parameters"]
