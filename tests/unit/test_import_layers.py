"""tools/check_imports.py: the layer check finds what it is there to find."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _checker():
    spec = importlib.util.spec_from_file_location("check_imports", ROOT / "tools" / "check_imports.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_imports"] = module
    spec.loader.exec_module(module)
    return module


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"kernels/__init__.py": "", "gpubackfill/__init__.py": "", **files}.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_the_repository_passes():
    assert _checker().problems() == []


def test_an_upward_import_is_reported_even_inside_a_function(tmp_path):
    root = _tree(tmp_path, {
        "gpubackfill/jobs/__init__.py": "",
        "gpubackfill/jobs/plan.py": "def f():\n    from ..engine import launch\n",
        "gpubackfill/engine/__init__.py": "",
        "gpubackfill/engine/launch.py": "",
    })
    found = _checker().problems(root)
    assert found == ["gpubackfill.jobs.plan imports gpubackfill.engine.launch, a higher layer"]


def test_a_cycle_within_one_layer_is_reported(tmp_path):
    root = _tree(tmp_path, {
        "gpubackfill/storage/__init__.py": "",
        "gpubackfill/storage/a.py": "from . import b\n",
        "gpubackfill/storage/b.py": "from .a import thing\n",
    })
    found = _checker().problems(root)
    assert found == ["cycle: gpubackfill.storage.a <-> gpubackfill.storage.b"]


def test_a_new_top_level_module_counts_as_the_top_layer(tmp_path):
    root = _tree(tmp_path, {"gpubackfill/newthing.py": ""})
    # The top package's own layer catches every gpubackfill module, so a new
    # top-level module is placed (at the top) rather than missed.
    assert _checker().problems(root) == []
    root = _tree(tmp_path, {"kernels/x.py": "import gpubackfill.newthing\n"})
    assert _checker().problems(root) == ["kernels.x imports gpubackfill.newthing, a higher layer"]
