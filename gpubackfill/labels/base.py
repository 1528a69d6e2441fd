"""What a label is to the engine: parameters, outputs, halo, and compute."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from ..errors import InvalidLabelSpec, shown

# A computed column: values, plus an Arrow validity bitmap (packed uint8,
# least significant bit first; None = all valid).
Column = tuple[np.ndarray, "np.ndarray | None"]


@dataclass(frozen=True)
class Param:
    """One parameter of a label: its type, default, and admissible values.

    ``coerce`` accepts the natural Python value or its text form (the CLI
    passes ``--param enhanced_triple_barrier.horizon=48`` as a string).
    """

    name: str
    kind: str  # "int" | "float" | "choice" | "int_list" | "float_list" | "bool"
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    # Parameters added after label sets were stored leave a set's id
    # unchanged while they keep their default (see ``label_set_id``).
    added_later: bool = False
    # Lists keep the order given (it orders outputs) instead of being sorted.
    keep_order: bool = False

    def coerce(self, label: str, value: Any) -> Any:
        where = f"{label}.{self.name}"
        if self.kind == "int":
            out = _as_int(where, value)
            self._check_range(where, out)
            return out
        if self.kind == "float":
            number = _as_float(where, value)
            self._check_range(where, number)
            return number
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise InvalidLabelSpec(
                    f"{where} must be one of {', '.join(map(repr, self.choices))}, got {shown(value)}"
                )
            return value
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "1", "yes", "on"):
                return True
            if text in ("false", "0", "no", "off"):
                return False
            raise InvalidLabelSpec(f"{where} must be true or false, got {shown(value)}")
        if self.kind in ("int_list", "float_list"):
            return self._coerce_list(where, value)
        raise AssertionError(f"unknown parameter kind {self.kind}")

    def _coerce_list(self, where: str, value: Any) -> list:
        ints = self.kind == "int_list"
        what = "integers" if ints else "numbers"
        items: Any = (value.split(",") if value.strip() else []) if isinstance(value, str) else value
        if isinstance(items, (int, float, np.integer, np.floating)) and not isinstance(items, bool):
            items = [items]
        try:
            seq = list(items)
        except TypeError:
            raise InvalidLabelSpec(f"{where} must be a list of {what}, got {shown(value)}") from None
        if not seq:
            raise InvalidLabelSpec(f"{where} must name at least one value")
        convert = _as_int if ints else _as_float
        out = [convert(where, v.strip() if isinstance(v, str) else v) for v in seq]
        for v in out:
            self._check_range(where, v)
        if len(set(out)) != len(out):
            raise InvalidLabelSpec(f"{where} has repeated values: {out}")
        return out if self.keep_order else sorted(out)

    def _check_range(self, where: str, v: float) -> None:
        if self.minimum is not None and v < self.minimum:
            raise InvalidLabelSpec(f"{where} must be >= {self.minimum:g}, got {shown(v)}")
        if self.maximum is not None and v > self.maximum:
            raise InvalidLabelSpec(f"{where} must be <= {self.maximum:g}, got {shown(v)}")


def _as_int(where: str, value: Any) -> int:
    if isinstance(value, bool):
        raise InvalidLabelSpec(f"{where} must be an integer, got {shown(value)}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InvalidLabelSpec(f"{where} must be an integer, got {shown(value)}")


def _as_float(where: str, value: Any) -> float:
    if isinstance(value, bool):
        raise InvalidLabelSpec(f"{where} must be a number, got {shown(value)}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidLabelSpec(f"{where} must be a number, got {shown(value)}") from None
    if not math.isfinite(out):
        raise InvalidLabelSpec(f"{where} must be finite, got {shown(value)}")
    return out


@dataclass(frozen=True)
class Series:
    """One instrument at one granularity, as contiguous float64/int64 arrays.

    open, high and low are None where the frame had no such column (only
    ``compute_labels`` accepts that, for labels whose ``inputs`` omit them)."""

    ts: np.ndarray
    open: np.ndarray | None
    high: np.ndarray | None
    low: np.ndarray | None
    close: np.ndarray
    volume: np.ndarray | None = None
    # Finer candles of the same instrument, for labels that replay a bar on
    # them: a Series, or a callable (bar start times, bar length in ms) ->
    # Series that loads only what those bars need.  ``bar_ms`` is this
    # series' bar length (None: its most frequent ts step).
    finer: Any = None
    bar_ms: int | None = None
    # Each row's position for labels that take sides: int8, +1 long, -1
    # short, 0 none (the frame's 0, NULL or NaN); None where the frame had
    # no side column.
    side: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.close.shape[0])

    def rows(self, start: int, stop: int | None) -> Series:
        """The series cut to rows ``start:stop`` (views, no copies)."""
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[start:stop]

        return Series(ts=self.ts[start:stop], open=cut(self.open), high=cut(self.high), low=cut(self.low),
                      close=self.close[start:stop], volume=cut(self.volume), side=cut(self.side))


@dataclass(frozen=True)
class Counter:
    """A figure a label adds up over a job: ``count(labels, params)`` of a
    chunk's own label rows (an Arrow table holding the label's outputs).

    ``field`` names it in the job's Redis hash, ``status`` in the job's
    status; both are part of the public record, so they never change."""

    field: str
    status: str
    count: Callable[[pa.Table, Mapping[str, Any]], int]


@dataclass(frozen=True)
class FinerCandles:
    """Candles of a finer granularity of the same instrument, which a label
    reads as ``Series.finer``.

    ``param`` is the parameter that asked for them (it names them in
    messages and in the job's event), ``without`` what the label does when
    there are none."""

    granularity: str
    param: str
    without: str


def _no_extra_inputs(params: Mapping[str, Any]) -> tuple[FinerCandles, ...]:
    return ()


@dataclass(frozen=True)
class LabelSpec:
    """A label as the engine sees it.

    ``outputs(params)`` lists (column, Arrow type); ``halo(params)`` gives the
    bars of look-back and look-ahead a row needs, so a chunk loaded with that
    halo computes its own rows exactly as the whole series would;
    ``compute(kernels, series, sigma, params)`` returns the columns.
    ``sigma`` is the shared volatility array when ``uses_sigma`` is set.
    ``inputs`` names the candle columns ``compute`` reads (sigma reads
    close), so a frame without the others can still be labelled.

    What else the engine must know of a label it asks here, never by name:
    ``extra_inputs(params)``, candles beyond the series that the label
    reads (the engine loads them and checks they exist); ``counters``, the
    figures it reports per job (the engine counts them on each chunk's rows
    and adds them up in the job's record).
    """

    name: str
    doc: str
    params: tuple[Param, ...]
    outputs: Callable[[Mapping[str, Any]], list[tuple[str, pa.DataType]]]
    halo: Callable[[Mapping[str, Any]], tuple[int, int]]
    compute: Callable[..., dict[str, Column]]
    uses_sigma: bool = False
    inputs: tuple[str, ...] = ("close",)
    extra_inputs: Callable[[Mapping[str, Any]], tuple[FinerCandles, ...]] = _no_extra_inputs
    counters: tuple[Counter, ...] = ()
    param_index: dict[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "param_index", {p.name: p for p in self.params})

    @classmethod
    def of(cls, module_doc: str | None, name: str, params: tuple[Param, ...],
           outputs: Callable[[Mapping[str, Any]], list[tuple[str, pa.DataType]]],
           halo: Callable[[Mapping[str, Any]], tuple[int, int]],
           compute: Callable[..., dict[str, Column]], **options: Any) -> LabelSpec:
        """A label module's spec, its doc the first line of the module's docstring."""
        return cls(name, (module_doc or name).strip().splitlines()[0], params, outputs, halo, compute,
                   **options)

    def resolve(self, given: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults filled in, every value checked and normalised."""
        given = dict(given or {})
        unknown = sorted(set(given) - set(self.param_index))
        if unknown:
            raise InvalidLabelSpec(
                f"unknown parameter(s) for {self.name}: {', '.join(unknown)} "
                f"(known: {', '.join(self.param_index)})"
            )
        return {
            p.name: p.coerce(self.name, given[p.name]) if p.name in given else p.default
            for p in self.params
        }
