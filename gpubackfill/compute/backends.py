"""Choosing the kernels that run a computation: ``cpu``, ``cuda`` or ``auto``.

Only this module decides; it never initialises CUDA unless asked to, and it
always says why a backend was or was not used.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

from ..errors import BackendUnavailable

BACKENDS = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class Backend:
    name: str
    kernels: ModuleType
    reason: str


def cuda_unavailable_reason() -> str | None:
    """Why the CUDA kernels cannot run here, or None when they can.

    Asking initialises the CUDA driver, so only computing paths call this:
    importing gpubackfill, ``--help`` and ``status`` never do.
    """
    try:
        from kernels import cuda as cuda_kernels
    except ImportError:
        return "numba-cuda is not installed (pip install 'gpubackfill[cuda12]' or '[cuda13]')"
    return cuda_kernels.unavailable_reason()


def select(name: str) -> Backend:
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r} (choose from {', '.join(BACKENDS)})")
    if name in ("cuda", "auto"):
        why = cuda_unavailable_reason()
        if why is None:
            from kernels import cuda as cuda_kernels

            return Backend("cuda", cuda_kernels,
                           "requested" if name == "cuda" else "auto chose cuda: a CUDA device is present")
        if name == "cuda":
            raise BackendUnavailable(f"backend 'cuda' is not available: {why}")
        from kernels import cpu

        return Backend("cpu", cpu, f"auto chose cpu: {why}")
    from kernels import cpu

    return Backend("cpu", cpu, "requested")
