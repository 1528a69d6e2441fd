"""Check that the package's imports only point down its layers, with no cycle.

The layers, lowest first, are the map in docs/architecture.md. A module may
import from its own layer or a lower one; `gpubackfill/__init__.py` (the
public API) sits on top. Every import counts, including those inside
functions and under TYPE_CHECKING: a lazy import is still a dependency, and
hiding an upward arrow in a function body is how layers erode.

    python tools/check_imports.py        # exit 1 and one line per problem

Run by `make lint`.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gpubackfill", "kernels")

# Module-name prefixes, lowest layer first; the longest matching prefix wins.
LAYERS: list[tuple[str, ...]] = [
    ("kernels",),
    ("gpubackfill.errors", "gpubackfill.config", "gpubackfill.common"),
    ("gpubackfill.labels",),
    ("gpubackfill.candles", "gpubackfill.compute"),
    ("gpubackfill.jobs",),
    ("gpubackfill.storage", "gpubackfill.sources"),
    ("gpubackfill.engine",),
    ("gpubackfill.service",),
    ("gpubackfill.serve", "gpubackfill.cli", "gpubackfill.__main__"),
    ("gpubackfill",),
]


def modules(root: Path = ROOT) -> dict[str, tuple[Path, bool]]:
    """Every module of the packages: name -> (file, is a package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            found[".".join(parts)] = (path, is_package)
    return found


def imports(name: str, path: Path, is_package: bool, known: dict) -> set[str]:
    """The project's modules that `name` imports (a from-import of a submodule
    counts as an import of that submodule, not of its package)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                targets.append(sub if sub in known else source)
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        for target in targets:
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in known and target != name:
                found.add(target)
    return found


def layer(name: str) -> int:
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def problems(root: Path = ROOT) -> list[str]:
    known = modules(root)
    graph = {name: imports(name, path, is_pkg, known) for name, (path, is_pkg) in known.items()}
    out: list[str] = []
    for name in sorted(known):
        if layer(name) < 0:
            out.append(f"{name}: in no layer (add it to LAYERS in tools/check_imports.py)")
    for name in sorted(graph):
        for target in sorted(graph[name]):
            if layer(target) > layer(name):
                out.append(f"{name} imports {target}, a higher layer")
    for component in cycles(graph):
        out.append("cycle: " + " <-> ".join(component))
    return out


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    if not found:
        print(f"imports: {len(modules())} modules, every arrow points down, no cycle")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
