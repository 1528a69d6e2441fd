"""The label registry as users read it (``gpubackfill labels``): each label,
its parameters with defaults and ranges, its output columns with their types
and meaning.

Parameters, defaults, ranges, columns and types come from the registry, the
same data that builds each label set's table, so this cannot drift from the
engine.  The registry has no words for what an output column means; they are
kept here, keyed by column (``vsr_*`` for one column per horizon), and a test
checks that every column the registry can produce has them.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from .. import labels as registry

MEANINGS = {
    "tb_label": "-1, 0 or +1: which barrier the price reached first (0: the time limit)",
    "tb_barrier": "barrier hit: +1 upper, -1 lower, 0 vertical (time limit)",
    "tb_exit_bars": "bars from t to the exit",
    "tb_exit_return": "exit price / close_t - 1",
    "tb_flags": "bits: 1 GAP, 2 AMBIGUOUS, 4 INCOMPLETE, 8 NO_VOL, 16 RESOLVED (by finer candles), "
                "32 NO_SIDE (side='column', no position)",
    "tb_meta": "1 when the bet on the row's side made money (side * tb_exit_return > 0), else 0 "
               "(side='column')",
    "grid_label": "tb_label of each (pt, sl, horizon): pts outer, sls, horizons inner",
    "grid_exit_bars": "tb_exit_bars of each combination",
    "grid_exit_return": "tb_exit_return of each combination",
    "grid_flags": "tb_flags of each combination",
    "tb_uniqueness": "mean of 1/concurrency over the bars of the event (weights=true)",
    "tb_attribution": "|sum of log return / concurrency| over the bars of the event (weights=true)",
    "fh_label": "+1 / -1 when the return h bars ahead is beyond +/- threshold * sigma_t * sqrt(h), else 0",
    "fh_return": "ln(close_{t+h} / close_t)",
    "trend_label": "sign of the t-value of the clearest trend ahead",
    "trend_tvalue": "t-value of the OLS slope of ln(close) over the window with the largest |t|",
    "trend_window": "length in bars of that window",
    "vsr_*": "ln(close_{t+h} / close_t) / (sigma_t * sqrt(h)), one column per horizon h",
    "sigma": "the volatility sigma_t the returns were scaled by",
    "mfe": "max(high over the next horizon bars) / close_t - 1",
    "mae": "min(low over the next horizon bars) / close_t - 1",
    "mfe_bars": "offset of the first bar that reached the mfe",
    "mae_bars": "offset of the first bar that reached the mae",
}


def meaning(column: str) -> str:
    if column in MEANINGS:
        return MEANINGS[column]
    head = column.split("_")[0] + "_*"
    return MEANINGS.get(head, "")


def _type(t: pa.DataType, column: str) -> str:
    # Every label column is nullable except the flags (see store.ensure_label_table);
    # a list is never NULL, its elements are (except the flags').
    if pa.types.is_list(t):
        return f"list<{t.value_type}{'' if column == 'grid_flags' else ', nullable'}>"
    return str(t) + ("" if column == "tb_flags" else ", nullable")


def describe() -> list[dict[str, Any]]:
    """Every label: name, doc, parameters and outputs (at the default parameters)."""
    out = []
    for spec in registry.REGISTRY.values():
        defaults = spec.resolve({})
        params = []
        for p in spec.params:
            entry: dict[str, Any] = {"name": p.name, "kind": p.kind, "default": p.default,
                                     "doc": p.doc}
            if p.minimum is not None:
                entry["minimum"] = p.minimum
            if p.maximum is not None:
                entry["maximum"] = p.maximum
            if p.choices:
                entry["choices"] = list(p.choices)
            params.append(entry)
        # Columns that a switch adds (weights=true, side='column') are listed too.
        columns = dict(spec.outputs(defaults))
        for p in spec.params:
            if p.kind == "bool":
                columns.update(spec.outputs({**defaults, p.name: not p.default}))
            elif p.kind == "choice" and p.added_later:
                for choice in p.choices:
                    columns.update(spec.outputs({**defaults, p.name: choice}))
        outputs = [{"name": c, "type": _type(t, c), "meaning": meaning(c)}
                   for c, t in columns.items()]
        doc = spec.doc.replace("``", "").removeprefix(f"{spec.name}:").strip()
        out.append({"name": spec.name, "doc": doc, "params": params, "outputs": outputs})
    return out


def param_range(p: dict[str, Any]) -> str:
    if "choices" in p:
        return " | ".join(p["choices"])
    lo, hi = p.get("minimum"), p.get("maximum")
    if lo is None and hi is None:
        return "any"
    return f"{'' if lo is None else f'{lo:g}'}..{'' if hi is None else f'{hi:g}'}"
