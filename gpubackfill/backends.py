"""Choosing the kernels that run a computation: ``cpu``, ``cuda`` or ``auto``.

Only this module decides; it never initialises CUDA unless asked to, and it
always says why a backend was or was not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from .errors import BackendUnavailable

BACKENDS = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class Backend:
    name: str
    kernels: ModuleType
    reason: str


def cuda_unavailable_reason() -> str:
    # The CUDA launchers are not part of this release; the per-candle math in
    # kernels.core is already written to compile for them.
    return "this build ships CPU kernels only (no CUDA kernels installed)"


def select(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name == "cuda":
        raise BackendUnavailable(f"backend 'cuda' is not available: {cuda_unavailable_reason()}")
    from kernels import cpu

    if name == "auto":
        return Backend("cpu", cpu, f"auto chose cpu: {cuda_unavailable_reason()}")
    return Backend("cpu", cpu, "requested")
