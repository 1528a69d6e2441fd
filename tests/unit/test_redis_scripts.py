"""The Redis state's Lua: each script gets the shared fragments it calls,
and the files ship with the package."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import gpubackfill
from gpubackfill.storage.redis.scripts import source

PACKAGE = Path(gpubackfill.__file__).parent
LUA = PACKAGE / "storage" / "redis" / "lua"
ROOT = PACKAGE.parent
# a call, not a method, a field or the definition
_CALL = r"(?<![\w.:])(?<!function ){}\("


def _uses(path: Path) -> list[str]:
    head = path.read_text().partition("\n")[0]
    return [u.strip() for u in head.removeprefix("-- uses:").split(",")] if head.startswith("-- uses:") else []


def _defines(text: str) -> set[str]:
    return set(re.findall(r"^local function (\w+)", text, re.M))


def test_every_script_defines_the_shared_functions_it_calls_before_it_calls_them():
    fragments = {u for p in LUA.glob("*.lua") for u in _uses(p)}
    shared = set().union(*(_defines((LUA / f"{f}.lua").read_text()) for f in fragments))
    scripts = [p.stem for p in LUA.glob("*.lua") if p.stem not in fragments]
    assert fragments and shared and scripts
    for name in scripts:
        text = source(name)
        for fn in shared & set(re.findall(_CALL.format(r"(\w+)"), text)):
            defined = text.find(f"local function {fn}(")
            called = re.search(_CALL.format(fn), text)
            assert called is not None and 0 <= defined < called.start(), f"{name}.lua calls {fn}"


def test_the_lua_files_ship_with_the_package():
    with open(ROOT / "pyproject.toml", "rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]["gpubackfill"]
    files = [p.relative_to(PACKAGE).as_posix() for p in LUA.glob("*.lua")]
    assert files
    assert [f for f in files if not any(fnmatch(f, pattern) for pattern in data)] == []
