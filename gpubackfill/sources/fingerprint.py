"""What a chunk over a source was computed from, in a form ClickHouse can
recompute without sending a candle back: a window of ts and the count and
an order-independent hash of the candles in it.

A source has no ingest log, so ``update`` cannot ask what changed; it asks
ClickHouse for each computed chunk's window again (``Store.window_prints``:
one grouped query per series) and compares.  The window is the chunk's own
range widened to its halo's farthest candles, or to the end of time on a
side where the series had fewer candles than the halo (so a candle added
there, e.g. appended after an incomplete tail, changes the window).  A
halo counted in candles reads exactly the candles of that window, so a
candle inserted, deleted or corrected inside it changes the print, and
one outside it does not change the chunk's input.

The row hash is defined twice, here in numpy (at chunk time, over the
candles just loaded: no second read) and as SQL (``row_hash_sql``), and
the two agree bit for bit: ClickHouse's ``intHash64`` is MurmurHash3's
64-bit finaliser of ``x ^ 0x4CF2D2BAAE6DA887``, chained over ts and the
OHLCV values' IEEE bits, and the side's where the source maps one (a NULL
side hashed as 2.0, which no side is); the window's hash is their sum
modulo 2**64 (a sum, not a XOR, so two equal candles do not cancel).
At chunk time the sum is taken in one numba pass (``print_kernel``),
tested equal to ``row_hashes``, which stays the readable definition.
A source's side is in the print whether or not a job's labels take sides:
the prints of a series are one set, recomputed for every label set at once.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..jobs.spec import EVER

_SEED = np.uint64(0x4CF2D2BAAE6DA887)
_M1, _M2 = np.uint64(0xFF51AFD7ED558CCD), np.uint64(0xC4CEB9FE1A85EC53)
_S = np.uint64(33)
COLUMNS = ("open", "high", "low", "close", "volume")
PREFIX = "w1:"
NO_SIDE = 2.0  # a NULL side, in the hash


def _int_hash64(x: np.ndarray) -> np.ndarray:
    """ClickHouse's ``intHash64`` over uint64 (wrapping arithmetic)."""
    x = x ^ _SEED
    x = (x ^ (x >> _S)) * _M1
    x = (x ^ (x >> _S)) * _M2
    return x ^ (x >> _S)


def row_hashes(ts: np.ndarray, values: dict[str, np.ndarray], side: np.ndarray | None = None
               ) -> np.ndarray:
    """Each candle's hash (uint64): ``row_hash_sql`` in numpy; ``side``
    (float64, NaN where none) for a source that maps one."""
    with np.errstate(over="ignore"):
        h = _int_hash64(np.ascontiguousarray(ts, dtype=np.int64).view(np.uint64))
        for c in COLUMNS:
            h = _int_hash64(h ^ np.ascontiguousarray(values[c], dtype=np.float64).view(np.uint64))
        if side is not None:
            s = np.where(np.isnan(side), NO_SIDE, np.asarray(side, dtype=np.float64))
            h = _int_hash64(h ^ s.view(np.uint64))
    return h


def side_floats(column) -> np.ndarray:
    """A loaded side column as float64, NaN where NULL."""
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def row_hash_sql(sided: bool = False) -> str:
    """``row_hashes`` as SQL over a relation with our candle columns
    (Float64 prices, a Nullable(Float64) side)."""
    h = "intHash64(reinterpretAsUInt64(toUnixTimestamp64Milli(ts)))"
    for c in COLUMNS:
        h = f"intHash64(bitXor({h}, reinterpretAsUInt64({c})))"
    if sided:
        s = "ifNull(toFloat64(side), nan)"
        h = f"intHash64(bitXor({h}, reinterpretAsUInt64(if(isNaN({s}), {NO_SIDE}, {s}))))"
    return h



def total(hashes: np.ndarray) -> int:
    """The sum of row hashes modulo 2**64 (``sumWithOverflow``)."""
    with np.errstate(over="ignore"):
        return int(np.add.reduce(hashes, dtype=np.uint64)) if len(hashes) else 0


def stamp(n: int, s: int) -> str:
    return f"{int(n)}:{int(s) & 0xFFFFFFFFFFFFFFFF:x}"


def window(ts: np.ndarray, first: int, own: int, back: int, ahead: int, start_ms: int,
           end_ms: int) -> tuple[int, int]:
    """[lo, hi) of a chunk's input: loaded candles ``ts`` (sorted), its own
    ``own`` from ``first``, with halos of ``back``/``ahead`` candles."""
    lo = EVER[0] if first < back else min(int(ts[0]), start_ms) if len(ts) else start_ms
    after = len(ts) - first - own
    hi = EVER[1] if after < ahead else max(int(ts[-1]) + 1, end_ms) if len(ts) else end_ms
    return lo, hi


def chunk_print(table, first: int, own: int, back: int, ahead: int, start_ms: int,
                end_ms: int, sided: bool = False) -> str:
    """``w1:LO:HI:N:SUM`` of a chunk's loaded candles (Arrow, ts in ms;
    ``sided``: the source maps a side, loaded as the ``side`` column)."""
    from .print_kernel import hash_total  # numba: only where chunks are computed

    def bits(values, dtype) -> np.ndarray:
        return np.ascontiguousarray(values, dtype=dtype).view(np.uint64)

    # Batch by batch (the sum is over rows): the loaded columns are read in
    # place, not concatenated first.
    s = np.uint64(0)
    for batch in table.to_batches():
        side = side_floats(batch.column("side")) if sided else np.zeros(0)
        side = np.where(np.isnan(side), NO_SIDE, side)
        o, h, low, c, v = (bits(batch.column(name).to_numpy(zero_copy_only=False), np.float64)
                           for name in COLUMNS)
        with np.errstate(over="ignore"):
            s += hash_total(bits(batch.column("ts").to_numpy(zero_copy_only=False), np.int64),
                            o, h, low, c, v, bits(side, np.float64))
    ts = table.column("ts").to_numpy()
    lo, hi = window(ts, first, own, back, ahead, start_ms, end_ms)
    return f"{PREFIX}{lo}:{hi}:{stamp(len(ts), int(s))}"


def parse(text: str) -> tuple[tuple[int, int], str, tuple[int, int, str] | None] | None:
    """(window, its stamp, (finer from, finer to, finer stamp) or None) of a
    recorded print; None for any other fingerprint (a chunk recorded before
    prints had windows: stale, to be safe)."""
    if not text.startswith(PREFIX):
        return None
    own, _, finer = text[len(PREFIX):].partition("|f:")
    try:
        lo, hi, n, s = own.split(":")
        bounds = (int(lo), int(hi))
        more: tuple[int, int, str] | None = None
        if finer:
            a, b, fn, fs = finer.split(":")
            more = (int(a), int(b), f"{fn}:{fs}")
    except ValueError:
        return None
    return bounds, f"{n}:{s}", more


def with_finer(own: str, a: int, b: int, finer_stamp: str) -> str:
    """A print that also names the finer candles its labels read ([a, b))."""
    return f"{own}|f:{a}:{b}:{finer_stamp}"


def combine(windows: list[tuple[int, int]], bounds: list[int], parts: dict[int, tuple[int, int]]
            ) -> list[str]:
    """Each window's stamp from the counts and sums of the elementary
    intervals [bounds[j], bounds[j + 1]) (``parts``: j -> (n, sum), as
    ``Store.window_prints`` reads them), every window bound being one of
    ``bounds``."""
    index = {b: j for j, b in enumerate(bounds)}
    n = np.zeros(len(bounds), np.int64)
    s = np.zeros(len(bounds), np.uint64)
    for j, (cnt, sm) in parts.items():
        n[j], s[j] = cnt, np.uint64(int(sm) & 0xFFFFFFFFFFFFFFFF)
    out = []
    with np.errstate(over="ignore"):
        for lo, hi in windows:
            a, b = index[lo], index[hi]
            out.append(stamp(int(n[a:b].sum()), total(s[a:b])))
    return out
