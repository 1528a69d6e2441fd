"""The spacing check of ingest (gpubackfill.candles.cadence): over a whole series, or
in pieces (StepCounts), with the same verdict and the same message."""

from __future__ import annotations

import numpy as np
import pytest

from gpubackfill import InvalidInput
from gpubackfill.candles.cadence import StepCounts, check_step, check_step_counts, step_counts
from gpubackfill.candles.synthetic import generate

H1, M1 = 3_600_000, 60_000


def series(kind: str) -> np.ndarray:
    if kind == "m1_with_gaps":  # weekends and a few duplicates
        ts = generate("EURUSD", "M1", "2024-01-01", "2024-01-20")["ts"].to_numpy()
        return np.sort(np.concatenate([ts, ts[::997]]))
    if kind == "h1":
        return generate("EURUSD", "H1", "2023-01-01", "2024-01-01")["ts"].to_numpy()
    if kind == "tie":  # as many 2-minute as 3-minute steps, no 1-minute one: the smaller names it
        return np.cumsum(np.tile([2 * M1, 3 * M1], 500)).astype(np.int64)
    rng = np.random.default_rng(3)  # irregular
    return np.cumsum(rng.integers(1, 5, 3000) * M1).astype(np.int64)


def whole_file_check(ts: np.ndarray, granularity: str) -> None:
    """check_step as it was written for a whole file in memory (the oracle)."""
    from gpubackfill.candles.cadence import _span
    from gpubackfill.common.granularity import GRANULARITIES

    steps = np.diff(ts)
    steps = steps[steps > 0]
    if len(steps) < 2:
        return
    expected = GRANULARITIES[granularity]
    values, counts = np.unique(steps, return_counts=True)
    mode = int(values[np.argmax(counts)])
    if mode == expected or float(np.mean(steps == expected)) >= 0.5:
        return
    named = [g for g, ms in GRANULARITIES.items() if ms == mode]
    hint = f"; it looks like {named[0]}" if named else ""
    raise InvalidInput(f"these candles are most often {_span(mode)} apart ({np.max(counts) / len(steps):.0%} "
                       f"of steps), not {_span(expected)} as {granularity} means: check --granularity{hint}")


def verdict(check, *args) -> str:
    try:
        check(*args)
    except InvalidInput as e:
        return str(e)
    return "ok"


@pytest.mark.parametrize("kind", ["m1_with_gaps", "h1", "tie", "irregular"])
@pytest.mark.parametrize("granularity", ["M1", "H1", None])
@pytest.mark.parametrize("piece", [1, 7, 1000, 10**6])
def test_counting_in_pieces_gives_the_verdict_of_the_whole(kind, granularity, piece):
    ts = series(kind)
    counts = StepCounts(granularity)
    for a in range(0, len(ts), piece):
        counts.add(ts[a:a + piece])
    values, n = counts.arrays()
    whole_values, whole_n = step_counts(ts)
    np.testing.assert_array_equal(values, whole_values)
    np.testing.assert_array_equal(n, whole_n)
    for g in ("M1", "M2", "H1"):
        expected = verdict(whole_file_check, ts, g)
        assert verdict(check_step_counts, values, n, g) == expected == verdict(check_step, ts, g)
    assert verdict(check_step, series("h1"), "M1").startswith("these candles are most often 1 hour apart")
