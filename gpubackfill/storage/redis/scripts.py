"""The state's Lua scripts, read from ``lua/`` once per process.

A script's first line may name the fragments it builds on
(``-- uses: lease, machine``); they go before it, after the constants
below, so each shared piece of Lua is written once.
"""

from __future__ import annotations

from functools import cache
from importlib.resources import files

EVENTS_KEPT = 500
DURATIONS_KEPT = 200
SAMPLES_KEPT = 200

_CONSTANTS = (f"local EVENTS_KEPT, DURATIONS_KEPT, SAMPLES_KEPT = "
              f"{EVENTS_KEPT}, {DURATIONS_KEPT}, {SAMPLES_KEPT}\n")
_USES = "-- uses:"


def _read(name: str) -> str:
    return (files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


@cache
def source(name: str) -> str:
    """The whole Lua source of script ``name``: constants, fragments, body."""
    body = _read(name)
    head = body.partition("\n")[0]
    uses = [u.strip() for u in head[len(_USES):].split(",")] if head.startswith(_USES) else []
    return _CONSTANTS + "".join(_read(u) for u in uses) + body
