"""Thin CLI commands that parse arguments and call the packages."""
