"""``compute_labels``: the in-memory entry point, and the step the engine
runs for every chunk (validated series in, Arrow table out)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa

from .. import labels as registry
from ..candles import frames as candles_mod
from ..errors import InvalidCandles, InvalidInput, shown
from ..labels import Column, ResolvedLabel, Series
from ..labels.volatility import compute_sigma, sigma_key
from . import allocator, backends, frames, staging


def compute_labels(
    candles: Any,
    labels: Iterable[str] | str | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    backend: str = "cpu",
    *,
    on_invalid: str = "raise",
    finer: Any = None,
    bar_ms: int | None = None,
    output: str | None = None,
) -> Any:
    """Compute ``labels`` for every candle; one output row per (kept) input row.

    ``candles``: pandas DataFrame (``ts`` column or DatetimeIndex), polars
    DataFrame or pyarrow Table with close, and open/high/low where a label
    reads them (``LabelSpec.inputs``; the candle rules apply between the
    columns present), and optional volume.  ``labels``: a name or a list
    (default: ``DEFAULT_LABELS``, what a job computes).  ``params`` maps a
    label name to its parameters; missing ones take defaults.  Raises
    ``ValueError`` (``InvalidInput``) for unknown labels/parameters, bad
    values, missing columns and malformed candles (naming the first bad row)
    unless ``on_invalid="drop"``.

    Returns the input's kind of frame, or ``output`` ("arrow", "pandas",
    "polars"): an Arrow table has ``ts`` (int64 ms UTC) and each label's
    columns, NULL where a value is undefined; a pandas DataFrame keeps the
    input's index, with nullable ``Int8``/``Int32`` labels (see
    ``frames``).

    ``enhanced_triple_barrier`` with ``side="column"`` reads the frame's
    ``side`` column (+1 long, -1 short; 0, NULL or NaN no position).

    ``finer``: candles of a finer granularity of the same instrument (same
    forms as ``candles``), which decide the triple barrier's ambiguous bars
    when it has ``resolve_with``; ``bar_ms`` is the length of one bar of
    ``candles`` (default: its most frequent ts step).
    """
    resolved = registry.resolve(registry.DEFAULT_LABELS if labels is None else labels, params)
    kind = frames.choose(candles, output)
    wants_finer = [(r, need) for r in resolved for need in r.extra_inputs()]
    if wants_finer and finer is None:
        r, need = wants_finer[0]
        raise InvalidInput(f"{r.name}.{need.param}={need.granularity!r} needs the finer "
                           f"candles: pass them as finer=")
    chosen = backends.select(backend)
    sided = registry.wants_side(resolved)
    series = candles_mod.to_series(candles, optional=("open", "high", "low"), side=bool(sided))
    _check_inputs(series, resolved, candles)
    if sided and series.side is None:
        raise InvalidCandles(f"{sided[0].name}.side='column' needs a side column beside the candles "
                             f"(+1 long, -1 short, 0 or NULL no position); the input has "
                             f"{', '.join(candles_mod.column_names(candles))}")
    series, keep = candles_mod.validate_rows(series, on_invalid)
    if finer is not None:
        finer = candles_mod.validate(candles_mod.to_series(finer), on_invalid)
    if bar_ms is not None and (isinstance(bar_ms, bool) or not isinstance(bar_ms, (int, np.integer))
                               or bar_ms <= 0):
        raise InvalidInput(f"bar_ms must be a positive integer (milliseconds), got {shown(bar_ms)}")
    if finer is not None or bar_ms is not None:
        series = replace(series, finer=finer, bar_ms=None if bar_ms is None else int(bar_ms))
    return frames.shape(compute_series(series, resolved, chosen.kernels), candles, keep, kind)


def _check_inputs(series: Series, resolved: list[ResolvedLabel], candles: Any) -> None:
    """Each label's ``inputs`` are in the frame, or one error naming what each lacks."""
    lacking = []
    for r in resolved:
        missing = [c for c in r.spec.inputs if getattr(series, c) is None]
        if missing:
            lacking.append(f"{r.name} needs {', '.join(missing)}")
    if lacking:
        raise InvalidCandles(f"{'; '.join(lacking)}; the input has "
                              f"{', '.join(candles_mod.column_names(candles))}")


def compute_series(series: Series, resolved: list[ResolvedLabel], kernels: Any, *,
                   empty: Callable[..., np.ndarray] = allocator.empty,
                   device_budget: int | None = None, piece_bytes: int | None = None) -> pa.Table:
    """Labels of an already validated series, as an Arrow table.

    Host kernels allocate their outputs and column-sized scratch with
    ``empty`` (default: Arrow's mimalloc pool, which keeps freed pages, so
    repeated calls do not fault their output in afresh; see ``allocator``).
    The table's columns are those arrays, wrapped without a copy.

    Device kernels get the columns through pinned staging buffers of
    ``piece_bytes`` and give their outputs back the same way, into arrays
    from ``empty``, in row blocks that fit ``device_budget`` bytes of device
    memory (defaults and the rule: ``staging``)."""
    if getattr(kernels, "ON_DEVICE", False):
        return staging.compute(series, resolved, kernels, _labels_table, empty=empty,
                               budget=device_budget, piece_bytes=piece_bytes)
    return _labels_table(series, resolved, allocator.PooledKernels(kernels, empty))


def _labels_table(series: Series, resolved: list[ResolvedLabel], kernels: Any) -> pa.Table:
    """The labels of ``series`` (its prices where ``kernels`` read them; ts
    on the host) as an Arrow table, outputs brought to the host."""
    on_device = getattr(kernels, "ON_DEVICE", False)
    sigmas: dict[tuple[str, int], np.ndarray] = {}
    names = ["ts"]
    arrays: list[pa.Array | pa.ChunkedArray] = [pa.array(series.ts, type=pa.int64())]
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


# A list array's offsets are int32: a column of more elements is cut into
# chunks of whole rows.
_MAX_LIST_ELEMENTS = 2**31 - 1


def _to_arrow(column: Column, arrow_type: pa.DataType) -> pa.Array | pa.ChunkedArray:
    """Wrap kernel output without copying: Arrow buffers over the arrays.
    A list column comes as an (n, G) array: row t's list is row t of it,
    and the bitmap covers its elements in row-major order."""
    values, bitmap = column
    values = np.ascontiguousarray(values)
    if pa.types.is_list(arrow_type):
        return _to_arrow_lists(values, bitmap, arrow_type)
    n = values.shape[0]
    if bitmap is None:
        return pa.Array.from_buffers(arrow_type, n, [None, pa.py_buffer(values)], null_count=0)
    return pa.Array.from_buffers(
        arrow_type, n, [pa.py_buffer(bitmap), pa.py_buffer(values)], null_count=-1
    )


def _to_arrow_lists(values: np.ndarray, bitmap: np.ndarray | None,
                    arrow_type: pa.DataType) -> pa.Array | pa.ChunkedArray:
    n, g = values.shape
    elements = _to_arrow((values.reshape(-1), bitmap), arrow_type.value_type)
    per_chunk = max(1, _MAX_LIST_ELEMENTS // g)
    chunks = []
    for start in range(0, max(n, 1), per_chunk):
        rows = min(per_chunk, n - start)
        offsets = pa.array(np.arange(0, rows * g + 1, g, dtype=np.int32))
        chunks.append(pa.ListArray.from_arrays(offsets, elements.slice(start * g, rows * g),
                                               type=arrow_type))
    return chunks[0] if len(chunks) == 1 else pa.chunked_array(chunks, type=arrow_type)
