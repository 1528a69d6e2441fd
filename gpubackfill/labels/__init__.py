"""The label registry: one module per label, looked up by name.

A request names labels and per-label parameters; ``resolve`` checks both and
fills defaults, ``halo`` tells the engine how many bars of context a chunk
needs, ``finer_candles`` and ``counts`` what else a request reads and
reports (the engine knows no label by name), and ``label_set_id`` names a parameterisation stably so results of
different parameterisations can be stored side by side.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import InvalidLabelSpec
from . import barrier_grid, fixed_horizon, mfe_mae, trend_scanning, triple_barrier, vol_scaled_return
from .base import Column, Counter, FinerCandles, LabelSpec, Param, Series

REGISTRY: dict[str, LabelSpec] = {
    spec.name: spec for spec in (triple_barrier.SPEC, vol_scaled_return.SPEC, mfe_mae.SPEC,
                                 fixed_horizon.SPEC, trend_scanning.SPEC, barrier_grid.SPEC)
}


# What a job computes when it names no labels: the first set.  The labels
# added later are asked for by name, so a default job's label set id (and
# its stored rows) stays what it was.
DEFAULT_LABELS = ("enhanced_triple_barrier", "vol_scaled_return", "mfe_mae")


@dataclass(frozen=True)
class ResolvedLabel:
    spec: LabelSpec
    params: dict[str, Any]

    @property
    def name(self) -> str:
        return self.spec.name

    def outputs(self) -> list[tuple[str, pa.DataType]]:
        return self.spec.outputs(self.params)

    def halo(self) -> tuple[int, int]:
        return self.spec.halo(self.params)

    def extra_inputs(self) -> tuple[FinerCandles, ...]:
        return self.spec.extra_inputs(self.params)

    def __reduce__(self):
        # Pickled by name (a chunk's task carries its labels to the workers):
        # a spec holds functions, the registry has them.
        return _by_name, (self.name, self.params)


def _by_name(name: str, params: dict[str, Any]) -> ResolvedLabel:
    return ResolvedLabel(get(name), params)


def get(name: str) -> LabelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise InvalidLabelSpec(
            f"unknown label {name!r} (known: {', '.join(REGISTRY)})"
        ) from None


def resolve(labels: Iterable[str] | str, params: Mapping[str, Mapping[str, Any]] | None = None
            ) -> list[ResolvedLabel]:
    """Validate a request; returns the labels in the order given, defaults filled."""
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, Iterable):
        raise InvalidLabelSpec(f"labels must be a name or a list of names, got {type(labels).__name__}")
    if params is not None and not isinstance(params, Mapping):
        raise InvalidLabelSpec(f"params must map label names to their parameters, got "
                               f"{type(params).__name__}")
    names = list(labels)
    if not names:
        raise InvalidLabelSpec("no labels requested")
    seen: set[str] = set()
    for name in names:
        get(name)
        if name in seen:
            raise InvalidLabelSpec(f"label {name!r} requested twice")
        seen.add(name)
    params = dict(params or {})
    stray = sorted(set(params) - seen)
    if stray:
        raise InvalidLabelSpec(
            f"parameters given for label(s) not requested: {', '.join(stray)}"
        )
    for name, p in params.items():
        if not isinstance(p, Mapping):
            raise InvalidLabelSpec(f"parameters for {name} must be a mapping, got {type(p).__name__}")
    resolved = [ResolvedLabel(get(n), get(n).resolve(params.get(n))) for n in names]
    columns: dict[str, str] = {}
    for r in resolved:
        for col, _ in r.outputs():
            if col in columns:
                raise InvalidLabelSpec(f"labels {columns[col]} and {r.name} both produce column {col!r}")
            columns[col] = r.name
    return resolved


def wants_side(resolved: Iterable[ResolvedLabel]) -> list[ResolvedLabel]:
    """The labels of a request that read the candles' side column."""
    return [r for r in resolved if triple_barrier.uses_side(r.params)]


def not_in_jobs(resolved: Iterable[ResolvedLabel]) -> str | None:
    """Why a job cannot compute this request yet, or None: list outputs and
    sides need storage (list columns, a side with the candles) that the
    engine does not have; ``compute_labels`` computes them."""
    for r in resolved:
        what = None
        if r.name == barrier_grid.SPEC.name:
            what = "barrier_grid"
        elif triple_barrier.uses_side(r.params):
            what = f"{r.name}.side='column'"
        if what:
            return f"{what} is available in compute_labels; jobs do not store it yet"
    return None


def halo(resolved: Iterable[ResolvedLabel]) -> tuple[int, int]:
    """(look-back, look-ahead) in bars that covers every label of a request."""
    back, ahead = 0, 0
    for r in resolved:
        b, a = r.halo()
        back, ahead = max(back, b), max(ahead, a)
    return back, ahead


def finer_candles(resolved: Iterable[ResolvedLabel]) -> FinerCandles | None:
    """The finer candles a request reads beside its series, if any (one
    finer series a request: the first label's that asks)."""
    for r in resolved:
        for need in r.extra_inputs():
            return need
    return None


def counts(resolved: Iterable[ResolvedLabel], labels: pa.Table) -> dict[str, int]:
    """Each counter of a request's labels over a chunk's own label rows,
    by its field in the job's record."""
    out: dict[str, int] = {}
    for r in resolved:
        for c in r.spec.counters:
            out[c.field] = out.get(c.field, 0) + int(c.count(labels, r.params))
    return out


def counters() -> list[Counter]:
    """Every counter a registered label reports, once each by field."""
    seen: dict[str, Counter] = {}
    for spec in REGISTRY.values():
        for c in spec.counters:
            seen.setdefault(c.field, c)
    return list(seen.values())


def label_set_id(resolved: Iterable[ResolvedLabel]) -> str:
    """Stable 16-hex-digit id of the labels and their full parameters
    (defaults included, order of labels irrelevant)."""
    canon = json.dumps(
        sorted([r.name, _id_params(r)] for r in resolved), sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _id_params(r: ResolvedLabel) -> dict[str, Any]:
    """The parameters that name a label set: those added to a label later
    count only when they differ from their default, so label sets stored
    before they existed keep their ids."""
    return {k: v for k, v in r.params.items()
            if not (r.spec.param_index[k].added_later and v == r.spec.param_index[k].default)}


__all__ = [
    "DEFAULT_LABELS", "REGISTRY", "Column", "Counter", "FinerCandles", "LabelSpec", "Param",
    "ResolvedLabel", "Series", "counters", "counts", "finer_candles", "get", "halo",
    "label_set_id", "resolve", "wants_side",
]
