"""What importing the package costs: Redis-only commands must not load the
compute stack (numba, pandas), and importing has no side effects."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("numba", "pandas", "cupy", "cudf", "distributed", "chdb")


def _loaded(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys, json\n"
                          f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"],
                         capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", [
    "import gpubackfill",
    "import gpubackfill.cli",
    "from gpubackfill.cli import main",
    "from gpubackfill.service import BackfillService",   # status, pause, cancel, metrics
])
def test_light_imports(code):
    assert _loaded(code) == []


def test_the_public_names_still_resolve():
    import gpubackfill

    for name in gpubackfill.__all__:
        assert getattr(gpubackfill, name) is not None
    assert callable(gpubackfill.compute_labels) and "mfe_mae" in gpubackfill.LABELS
    assert gpubackfill.labels.DEFAULT_LABELS  # submodules as attributes, as before
    with pytest.raises(AttributeError):
        _ = gpubackfill.no_such_name


def test_importing_the_worker_code_changes_no_global_setting():
    out = subprocess.run([sys.executable, "-c",
                          "import numba, atexit\n"
                          "before = numba.config.THREADING_LAYER, atexit._ncallbacks()\n"
                          "import gpubackfill.engine.chunk, gpubackfill.engine.cluster, gpubackfill.service\n"
                          "print(before == (numba.config.THREADING_LAYER, atexit._ncallbacks()))"],
                         capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "True"


def _imported(path, package: str) -> set[str]:
    """The modules a source file imports, absolute."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{a.name}" for a in node.names}
    return found


def test_the_serving_package_is_imported_only_from_above():
    """``serve/`` (API, scheduler, metrics, alerts, the store holder) sits on
    the service: only the CLI reaches down to it, nothing below imports it."""
    import gpubackfill

    root = Path(gpubackfill.__file__).parent
    upward = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in ("serve", "cli"):
            continue
        package = ".".join(("gpubackfill",) + rel.parent.parts)
        upward += [f"{rel}: {m}" for m in _imported(path, package)
                   if m == "gpubackfill.serve" or m.startswith("gpubackfill.serve.")]
    assert upward == []
