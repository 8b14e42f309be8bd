"""The CLI hides the libraries' start-up chatter by name, not every warning a user could need."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a fresh interpreter importing peft: about 10-30 s

SCRIPT = """
import warnings
import tuneforge.cli.main
import peft  # imports torchao and bitsandbytes, which log about CUDA-only kernels on a CPU machine
warnings.warn("a warning about the user's own data", UserWarning)
"""


def test_cli_quiets_named_library_loggers_but_not_python_warnings():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    assert "a warning about the user's own data" in done.stderr  # no global warnings filter
    for chatter in ("torchao", "triton", "gemm_4bit", "register_constant"):
        assert chatter not in done.stderr, done.stderr
