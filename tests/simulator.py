"""Running tests/cuda/*.py under numba's CUDA simulator, one process per
test: NUMBA_ENABLE_CUDASIM must be set before numba is imported, and the
simulator runs every CUDA thread in Python, so each test gets the whole
per-test limit of its own."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def names(module: str) -> list[str]:
    """The test functions of tests/cuda/<module>.py, read without importing it."""
    tree = ast.parse((TESTS / "cuda" / f"{module}.py").read_text())
    return [n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


def run(module: str, name: str) -> subprocess.CompletedProcess:
    target = f"{TESTS / 'cuda' / f'{module}.py'}::{name}"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", target],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
