"""Bar sizes and instrument names.

``GRANULARITIES`` maps each supported bar size to its length in milliseconds.
Bars of a granularity start at multiples of that length since the epoch
(so W1 bars start on Thursdays 00:00 UTC, the weekday of 1970-01-01).

Instrument names are checked against ``INSTRUMENT_RE`` before they reach a
file name, a query or a log line: 1-32 characters of A-Z, 0-9, ``_``, ``-``,
``.`` and ``/``, upper-cased.
"""

from __future__ import annotations

import re

from ..errors import InvalidInput

SECOND_MS = 1_000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
WEEK_MS = 7 * DAY_MS

GRANULARITIES: dict[str, int] = {
    "S5": 5 * SECOND_MS,
    "S10": 10 * SECOND_MS,
    "S15": 15 * SECOND_MS,
    "S30": 30 * SECOND_MS,
    "M1": MINUTE_MS,
    "M2": 2 * MINUTE_MS,
    "M4": 4 * MINUTE_MS,
    "M5": 5 * MINUTE_MS,
    "M10": 10 * MINUTE_MS,
    "M15": 15 * MINUTE_MS,
    "M30": 30 * MINUTE_MS,
    "H1": HOUR_MS,
    "H2": 2 * HOUR_MS,
    "H3": 3 * HOUR_MS,
    "H4": 4 * HOUR_MS,
    "H6": 6 * HOUR_MS,
    "H8": 8 * HOUR_MS,
    "H12": 12 * HOUR_MS,
    "D1": DAY_MS,
    "W1": WEEK_MS,
}

INSTRUMENT_RE = re.compile(r"[A-Z0-9_./-]{1,32}")


def parse_granularity(text: object) -> str:
    """The canonical (upper-case) name of a granularity, e.g. ``"m1"`` -> ``"M1"``."""
    if isinstance(text, str):
        name = text.strip().upper()
        if name in GRANULARITIES:
            return name
    raise InvalidInput(
        f"unknown granularity {text!r}; valid: {', '.join(GRANULARITIES)}"
    )


def parse_instrument(text: object) -> str:
    """An instrument name, upper-cased; anything outside ``INSTRUMENT_RE`` is refused."""
    if isinstance(text, str) and text.isascii():  # no Unicode case-mapping surprises
        name = text.upper()
        if INSTRUMENT_RE.fullmatch(name):
            return name
    raise InvalidInput(
        f"invalid instrument {text!r}: use 1-32 characters of A-Z, 0-9, '_', '-', '.', '/'"
    )
