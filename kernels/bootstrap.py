"""Sequential bootstrap (AFML 4.5) in time linear in the overlap a draw touches.

The plain algorithm recomputes every event's average uniqueness before each
draw: O(events x bars) a draw, hours at 100k events.  Here a draw changes the
counts ``d_j`` only on the drawn event's bars, so only the events covering
those bars change weight:

- ``bar_sum[i]`` keeps event i's sum of ``1 / (1 + d_j)`` over its bars; a
  draw adds each covered bar's change to the events covering it (found
  through ``cover``, the events of each bar, a CSR index).
- The weights ``bar_sum[i] / length[i]`` are the leaves of a sum tree whose
  inner nodes are recomputed from their children (never adjusted by
  differences), so the tree is the same function of the weights whatever
  came before.  A draw descends it to the first event whose running total
  exceeds ``u * total``: O(log n).

A draw costs O(sum over its bars of their coverage x log n); bars are
positions ``0 .. n_bars-1`` (the caller closes gaps no event covers).
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def cover_index(starts, ends, n_bars):
    """CSR of the events covering each bar: bar j's events are
    ``idx[ptr[j]:ptr[j+1]]``, in increasing event order."""
    n = starts.shape[0]
    ptr = np.zeros(n_bars + 1, np.int64)
    for i in range(n):
        ptr[starts[i] + 1] += 1
        if ends[i] + 2 <= n_bars:
            ptr[ends[i] + 2] -= 1
    # ptr[j+1] now holds the change of coverage at bar j; two running sums
    # make it the coverage, then the offsets.
    for j in range(1, n_bars + 1):
        ptr[j] += ptr[j - 1]
    for j in range(1, n_bars + 1):
        ptr[j] += ptr[j - 1]
    fill = ptr[:-1].copy()
    idx = np.empty(ptr[n_bars], np.int64)
    for i in range(n):
        for j in range(starts[i], ends[i] + 1):
            idx[fill[j]] = i
            fill[j] += 1
    return ptr, idx


@njit(cache=True, nogil=True)
def sequential_bootstrap(starts, ends, ptr, idx, uniforms, out):
    """Draw ``len(uniforms)`` events into ``out``: draw k takes the first
    event whose cumulative weight exceeds ``uniforms[k] * total``."""
    n = starts.shape[0]
    n_bars = ptr.shape[0] - 1
    size = 1
    while size < n:
        size *= 2
    tree = np.zeros(2 * size)
    bar_sum = np.empty(n)
    length = np.empty(n)
    for i in range(n):
        length[i] = ends[i] - starts[i] + 1
        bar_sum[i] = length[i]  # no draws yet: every bar's uniqueness is 1
        tree[size + i] = 1.0
    for p in range(size - 1, 0, -1):
        tree[p] = tree[2 * p] + tree[2 * p + 1]
    d = np.zeros(n_bars, np.int64)

    for k in range(uniforms.shape[0]):
        x = uniforms[k] * tree[1]
        p = 1
        while p < size:
            left = tree[2 * p]
            if x < left:
                p = 2 * p
            else:
                x -= left
                p = 2 * p + 1
        e = p - size
        if e >= n:  # u * total rounded up onto the padding: the last event
            e = n - 1
        out[k] = e
        s_e = starts[e]
        e_e = ends[e]
        for j in range(s_e, e_e + 1):
            change = 1.0 / (2.0 + d[j]) - 1.0 / (1.0 + d[j])
            d[j] += 1
            for q in range(ptr[j], ptr[j + 1]):
                bar_sum[idx[q]] += change
        # Each event overlapping the drawn one once: at the first bar they share.
        for j in range(s_e, e_e + 1):
            for q in range(ptr[j], ptr[j + 1]):
                i = idx[q]
                if j > s_e and starts[i] != j:
                    continue
                p = size + i
                tree[p] = bar_sum[i] / length[i]
                p //= 2
                while p >= 1:
                    tree[p] = tree[2 * p] + tree[2 * p + 1]
                    p //= 2
    return out
