"""Test oracle for the training-set tools: plain, slow, obviously-correct
references written straight from LABELS.md ("Event end and purged
cross-validation"), in the style of ``oracle.py``: ``for`` loops, no numba,
no clever algorithms.

Conventions: times are plain Python/numpy numbers (int64 ms) unless said;
NULL is ``None``.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def event_end(ts, tb_exit_bars) -> list:
    """t1_t = ts[t + tb_exit_bars_t]; None where tb_exit_bars is NULL (None/NaN)."""
    out = []
    for t in range(len(ts)):
        k = tb_exit_bars[t]
        if k is None or (isinstance(k, float) and math.isnan(k)):
            out.append(None)
        else:
            out.append(ts[t + int(k)])
    return out


def purged_kfold(t0, t1, n_splits: int, embargo: float) -> list[tuple[list[int], list[int]]]:
    """(train, test) row positions per fold, straight from the contract."""
    n = len(t0)
    folds = np.array_split(np.arange(n), n_splits)
    out = []
    for fold in folds:
        a, b = int(fold[0]), int(fold[-1]) + 1
        first = t0[a]
        last = max(t1[i] for i in range(a, b))
        train = []
        for i in range(n):
            if a <= i < b:
                continue  # the test fold itself
            purged = t0[i] <= last and t1[i] >= first
            embargoed = b <= i < b + math.floor(embargo * n)
            if not purged and not embargoed:
                train.append(i)
        out.append((train, list(range(a, b))))
    return out


def indicator_matrix(starts, ends) -> tuple[np.ndarray, int]:
    """AFML's indicator matrix: rows are bars min(starts)..max(ends), columns
    events; 1 where the event covers the bar.  Returns it and the first bar."""
    lo = int(min(starts))
    bars = int(max(ends)) - lo + 1
    ind = np.zeros((bars, len(starts)))
    for i in range(len(starts)):
        for j in range(int(starts[i]), int(ends[i]) + 1):
            ind[j - lo, i] = 1.0
    return ind, lo


def sequential_bootstrap(starts, ends, n_draws=None, random_state=None) -> list[int]:
    """The plain AFML algorithm (snippets 4.3-4.5) on the indicator matrix:
    before every draw, recompute every event's average uniqueness as if it
    were drawn next (concurrency = the draws so far covering the bar, plus
    itself), turn them into probabilities and pick by the contract's rule
    (numpy's own ``choice`` rule: the first cumulative probability above u)."""
    ind, _ = indicator_matrix(starts, ends)
    n = ind.shape[1]
    n_draws = n if n_draws is None else n_draws
    rng = np.random.default_rng(random_state)
    drawn: list[int] = []
    for _ in range(n_draws):
        concurrency = ind[:, drawn].sum(axis=1) if drawn else np.zeros(ind.shape[0])
        avg = np.empty(n)
        for i in range(n):
            covered = ind[:, i] > 0
            avg[i] = np.mean(1.0 / (1.0 + concurrency[covered]))
        cdf = np.cumsum(avg / avg.sum())
        cdf /= cdf[-1]
        u = rng.random()
        pick = next(k for k in range(n) if cdf[k] > u)
        drawn.append(pick)
    return drawn


def sequential_bootstrap_exact(starts, ends, n_draws=None, random_state=None) -> list[int]:
    """The contract in exact rational arithmetic: the average uniqueness and
    the cumulative probabilities as fractions, u as the exact double drawn.
    Slow; for small inputs, to arbitrate between float implementations."""
    n = len(starts)
    n_draws = n if n_draws is None else n_draws
    rng = np.random.default_rng(random_state)
    d: dict[int, int] = {}
    drawn: list[int] = []
    for _ in range(n_draws):
        avg = []
        for i in range(n):
            bars = range(int(starts[i]), int(ends[i]) + 1)
            avg.append(sum(Fraction(1, 1 + d.get(j, 0)) for j in bars) / len(bars))
        total = sum(avg)
        u = Fraction(rng.random())
        running = Fraction(0)
        for k in range(n):
            running += avg[k]
            if running / total > u:
                break
        drawn.append(k)
        for j in range(int(starts[k]), int(ends[k]) + 1):
            d[j] = d.get(j, 0) + 1
    return drawn
