"""A chunk's print is summed in one numba pass (``sources.print_kernel``);
it must equal the numpy definition (``fingerprint.row_hashes``, which the
SQL mirrors bit for bit) for any values: signed zeros, NaN, infinities,
sides with NULLs, an empty chunk, a table of several record batches (as
loaded: summed batch by batch)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from gpubackfill.sources import fingerprint


def table(n: int, seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    values = {c: rng.normal(100, 5, n) for c in fingerprint.COLUMNS}
    odd = [-0.0, 0.0, np.nan, np.inf, -np.inf, 5e-324]
    for c in fingerprint.COLUMNS:
        values[c][rng.integers(0, max(n, 1), min(n, 40))] = rng.choice(odd, min(n, 40))
    side = rng.choice([1.0, -1.0, 0.0], n)
    return pa.table({"ts": np.sort(rng.integers(-2**40, 2**42, n)).astype(np.int64), **values,
                     "side": pa.array(side, mask=rng.random(n) < 0.3)})


@pytest.mark.parametrize("n", [0, 1, 7, 100_003])
@pytest.mark.parametrize("sided", [False, True])
@pytest.mark.parametrize("batches", [1, 3])
def test_the_one_pass_print_equals_the_numpy_definition(n, sided, batches):
    t = table(n, n + sided)
    if batches > 1:
        cuts = [0, n // 3, n // 2, n]
        t = pa.concat_tables([t.slice(a, b - a) for a, b in zip(cuts, cuts[1:])])
    ts = t.column("ts").to_numpy()
    side = fingerprint.side_floats(t.column("side")) if sided else None
    want = fingerprint.stamp(n, fingerprint.total(fingerprint.row_hashes(
        ts, {c: t.column(c).to_numpy() for c in fingerprint.COLUMNS}, side)))
    got = fingerprint.chunk_print(t, 0, n, 0, 0, int(ts[0]) if n else 0, int(ts[-1]) + 1 if n else 1, sided)
    assert got.split(":", 3)[3] == want
    if sided and n:  # the side is in it
        assert got != fingerprint.chunk_print(t, 0, n, 0, 0, int(ts[0]), int(ts[-1]) + 1, False)
