"""How parameters are adapted: one registry, name -> apply(model, method_config)."""
