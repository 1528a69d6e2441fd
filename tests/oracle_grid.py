"""Test oracle for the third set's per-row labels (LABELS.md, "Side and
meta-labels" and "barrier_grid"), as plain loops in the style of ``oracle``.

Written from the contract, not from the kernels: the sided walk below spells
out which barrier is the profit target and which the stop for each side, and
the grid runs the single-label oracle once per combination.  NULL is NaN in
float arrays; flags are uint8 and never NULL.
"""

from __future__ import annotations

import math

import numpy as np
from oracle import AMBIGUOUS, GAP, INCOMPLETE, NO_VOL, triple_barrier

NO_SIDE = 32


def position(v: float) -> int:
    """+1 long, -1 short, 0 no position (0, NULL or NaN)."""
    if v is None or math.isnan(v) or v == 0:
        return 0
    assert v in (1, -1), v
    return int(v)


def triple_barrier_side(open, high, low, close, sig, side, horizon: int = 24, pt: float = 1.0,
                        sl: float = 1.0, tie: str = "sl", vertical: str = "zero",
                        min_ret: float = 0.0) -> dict:
    """``enhanced_triple_barrier`` with ``side="column"``, bar by bar.

    A long's profit target is the upper barrier (pt sigmas) and its stop the
    lower (sl sigmas); a short's profit target is the lower barrier (pt
    sigmas below) and its stop the upper (sl sigmas above).  ``tie="sl"``:
    the stop wins an ambiguous bar, ``"tp"`` the profit target.  Labels say
    which of the two exited (+1 target, -1 stop); ``tb_barrier`` says where
    (+1 upper, -1 lower).  ``tb_meta``: did the bet make money.
    """
    o, h, lo, c = (np.asarray(a, dtype=np.float64) for a in (open, high, low, close))
    sig = np.asarray(sig, dtype=np.float64)
    n = len(c)
    H = int(horizon)
    out = {k: np.full(n, np.nan) for k in ("tb_label", "tb_barrier", "tb_exit_bars",
                                           "tb_exit_return", "tb_meta")}
    flags = np.zeros(n, dtype=np.uint8)
    for t in range(n):
        s = position(float(side[t]))
        if s == 0:
            flags[t] = NO_SIDE
            continue
        if math.isnan(sig[t]) or sig[t] == 0.0:
            flags[t] = NO_VOL
            continue
        ct = float(c[t])
        if s == 1:
            target, stop = ct * (1 + pt * sig[t]), ct * (1 - sl * sig[t])
            U, L = target, stop
            target_side = 1          # the target is the upper barrier
        else:
            target, stop = ct * (1 - pt * sig[t]), ct * (1 + sl * sig[t])
            U, L = stop, target
            target_side = -1         # the target is the lower barrier

        def exit_at(physical: int, target_side: int = target_side) -> int:
            """The label of an exit at barrier +1 upper / -1 lower."""
            return 1 if physical == target_side else -1

        result = None  # (label, barrier, j, price, flag)
        for j in range(t + 1, min(t + H, n - 1) + 1):
            if o[j] >= U:
                result = (exit_at(1), 1, j, o[j], GAP)
                break
            if o[j] <= L:
                result = (exit_at(-1), -1, j, o[j], GAP)
                break
            up, dn = h[j] >= U, lo[j] <= L
            if up and dn:
                if tie == "skip":
                    result = (0, 0, j, c[j], AMBIGUOUS)
                else:
                    wins = -target_side if tie == "sl" else target_side   # physical barrier
                    result = (exit_at(wins), wins, j, U if wins == 1 else L, AMBIGUOUS)
                break
            if up:
                result = (exit_at(1), 1, j, U, 0)
                break
            if dn:
                result = (exit_at(-1), -1, j, L, 0)
                break
        if result is None:
            if t + H > n - 1:
                flags[t] = INCOMPLETE
                continue
            ret = c[t + H] / ct - 1
            lab = 0
            if vertical == "sign" and abs(ret) >= min_ret:
                lab = int(np.sign(s * ret))
            result = (lab, 0, t + H, c[t + H], 0)
        lab, bar, j, price, flag = result
        ret = price / ct - 1
        out["tb_label"][t] = lab
        out["tb_barrier"][t] = bar
        out["tb_exit_bars"][t] = j - t
        out["tb_exit_return"][t] = ret
        out["tb_meta"][t] = 1 if s * ret > 0 else 0
        flags[t] = flag
    out["tb_flags"] = flags
    return out


def combinations(pts, sls, horizons) -> list[tuple[float, float, int]]:
    """(pt, sl, horizon) of element g: pts outer, sls, horizons inner."""
    return [(pt, sl, hz) for pt in pts for sl in sls for hz in horizons]


def barrier_grid(open, high, low, close, sig, pts, sls, horizons, tie: str = "sl",
                 vertical: str = "zero", min_ret: float = 0.0) -> dict:
    """Element g of every row: the triple barrier oracle with combination g.
    Returns (n, G) arrays (NaN for a NULL element) keyed like the grid's columns."""
    cols = {"grid_label": [], "grid_exit_bars": [], "grid_exit_return": [], "grid_flags": []}
    for pt, sl, hz in combinations(pts, sls, horizons):
        tb = triple_barrier(open, high, low, close, sig, hz, pt, sl, tie, vertical, min_ret)
        cols["grid_label"].append(tb["tb_label"])
        cols["grid_exit_bars"].append(tb["tb_exit_bars"])
        cols["grid_exit_return"].append(tb["tb_exit_return"])
        cols["grid_flags"].append(tb["tb_flags"].astype(np.float64))
    return {k: np.stack(v, axis=1) for k, v in cols.items()}
