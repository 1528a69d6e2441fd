"""``compute_labels``: the in-memory entry point, and the step the engine
runs for every chunk (validated series in, Arrow table out)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from . import allocator, backends
from . import labels as registry
from .candles import frames as candles_mod
from .errors import InvalidInput
from .labels import Column, ResolvedLabel, Series
from .labels.volatility import compute_sigma, sigma_key


def compute_labels(
    candles: Any,
    labels: Iterable[str] | str,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    backend: str = "cpu",
    *,
    on_invalid: str = "raise",
    finer: Any = None,
    bar_ms: int | None = None,
) -> pa.Table:
    """Compute ``labels`` for every candle; one output row per (kept) input row.

    ``candles``: pandas DataFrame (``ts`` column or DatetimeIndex) or pyarrow
    Table with open/high/low/close and optional volume.  ``params`` maps a
    label name to its parameters; missing ones take defaults.  Returns a
    pyarrow Table with ``ts`` (int64 ms UTC) and each label's columns; NULL
    where a value is undefined.  Raises ``ValueError`` (``InvalidInput``) for
    unknown labels/parameters, bad values and malformed candles (naming the
    first bad row) unless ``on_invalid="drop"``.

    ``finer``: candles of a finer granularity of the same instrument (same
    forms as ``candles``), which decide the triple barrier's ambiguous bars
    when it has ``resolve_with``; ``bar_ms`` is the length of one bar of
    ``candles`` (default: its most frequent ts step).
    """
    resolved = registry.resolve(labels, params)
    wants_finer = [r for r in resolved if r.params.get("resolve_with")]
    if wants_finer and finer is None:
        r = wants_finer[0]
        raise InvalidInput(f"{r.name}.resolve_with={r.params['resolve_with']!r} needs the finer "
                           f"candles: pass them as finer=")
    chosen = backends.select(backend)
    series = candles_mod.validate(candles_mod.to_series(candles), on_invalid)
    if finer is not None:
        finer = candles_mod.validate(candles_mod.to_series(finer), on_invalid)
    if bar_ms is not None and (isinstance(bar_ms, bool) or not isinstance(bar_ms, (int, np.integer))
                               or bar_ms <= 0):
        raise InvalidInput(f"bar_ms must be a positive integer (milliseconds), got {bar_ms!r}")
    if finer is not None or bar_ms is not None:
        series = replace(series, finer=finer, bar_ms=None if bar_ms is None else int(bar_ms))
    return compute_series(series, resolved, chosen.kernels)


def compute_series(series: Series, resolved: list[ResolvedLabel], kernels: Any, *,
                   empty: Callable[..., np.ndarray] = allocator.empty) -> pa.Table:
    """Labels of an already validated series, as an Arrow table.

    Host kernels allocate their outputs and column-sized scratch with
    ``empty`` (default: Arrow's mimalloc pool, which keeps freed pages, so
    repeated calls do not fault their output in afresh; see ``allocator``).
    The table's columns are those arrays, wrapped without a copy."""
    host_ts = series.ts
    on_device = getattr(kernels, "ON_DEVICE", False)
    if not on_device:
        kernels = allocator.PooledKernels(kernels, empty)
    else:  # one copy to the device; every label reads from there
        cols = kernels.columns_to_device({"open": series.open, "high": series.high,
                                          "low": series.low, "close": series.close})
        series = Series(ts=series.ts, volume=None, finer=series.finer, bar_ms=series.bar_ms, **cols)
    sigmas: dict[tuple[str, int], np.ndarray] = {}
    names = ["ts"]
    arrays: list[pa.Array] = [pa.array(host_ts, type=pa.int64())]
    for r in resolved:
        sigma = None
        if r.spec.uses_sigma:
            key = sigma_key(r.params)
            if key not in sigmas:
                sigmas[key] = compute_sigma(kernels, series.close, *key)
            sigma = sigmas[key]
        columns = r.spec.compute(kernels, series, sigma, r.params)
        for name, arrow_type in r.outputs():
            values, bitmap = columns[name]
            if on_device:
                values = kernels.to_host(values)
            names.append(name)
            arrays.append(_to_arrow((values, bitmap), arrow_type))
    return pa.Table.from_arrays(arrays, names=names)


def _to_arrow(column: Column, arrow_type: pa.DataType) -> pa.Array:
    """Wrap kernel output without copying: Arrow buffers over the arrays."""
    values, bitmap = column
    values = np.ascontiguousarray(values)
    n = values.shape[0]
    if bitmap is None:
        return pa.Array.from_buffers(arrow_type, n, [None, pa.py_buffer(values)], null_count=0)
    return pa.Array.from_buffers(
        arrow_type, n, [pa.py_buffer(bitmap), pa.py_buffer(values)], null_count=-1
    )
