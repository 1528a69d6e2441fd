"""Per-candle label math, written once for every compilation target.

Each function here is plain Python over scalars and arrays, registered with
``numba.extending.register_jitable`` so that it can be called from a
``numba.njit`` kernel (``kernels.cpu``) and, unchanged, from a CUDA kernel
compiled by numba-cuda.  The launch loops (how rows are split across threads
or blocks, which scratch buffers exist) live in the target modules; the
arithmetic that decides a label lives only here, so the targets cannot drift
apart.

Nothing in this module allocates, raises, or touches I/O: that keeps it
valid device code.
"""

from __future__ import annotations

import math

from numba.extending import register_jitable
from numpy import uint64

# Left to LLVM to inline: forcing numba-level inlining (inline="always")
# measured 1.5x slower on the triple barrier.
jitable = register_jitable

# The integer codes of flags, parameters and candle defects live in
# ``kernels.flags`` (importable without numba); kernels read them from here.
from .flags import (  # noqa: E402,F401
    BAD_HIGH,
    BAD_LOW,
    BAD_NONFINITE,
    BAD_NONPOSITIVE,
    BAD_TS_ORDER,
    BAD_VOLUME,
    FLAG_AMBIGUOUS,
    FLAG_GAP,
    FLAG_INCOMPLETE,
    FLAG_NO_SIDE,
    FLAG_NO_VOL,
    FLAG_RESOLVED,
    SEARCH_BLOCKS,
    SEARCH_SCAN,
    SEARCH_TABLE,
    TIE_SKIP,
    TIE_SL,
    TIE_TP,
    VERTICAL_SIGN,
    VERTICAL_ZERO,
)

# --------------------------------------------------------------------------
# Log returns

# Beyond this |x - 1| the series below needs too many terms; fall back to libm.
_LOG_SERIES_RADIUS = 0.02


@jitable
def log_ratio_near(a, b):
    """ln(a / b) for a within ``_LOG_SERIES_RADIUS`` of b; branch-free.

    ln(a/b) = 2 atanh(z), z = (a - b) / (a + b), and the odd series in z
    converges to double precision in six terms for |a/b - 1| < 2%, where
    candle-to-candle ratios nearly always are.  Without a branch or a libm
    call, loops over it vectorise.
    """
    z = (a - b) / (a + b)  # a - b is exact within a factor 2 (Sterbenz)
    u = z * z
    p = 1.0 / 13.0
    p = p * u + 1.0 / 11.0
    p = p * u + 1.0 / 9.0
    p = p * u + 1.0 / 7.0
    p = p * u + 1.0 / 5.0
    p = p * u + 1.0 / 3.0
    return 2.0 * z * (p * u + 1.0)


@jitable
def is_near(a, b):
    return abs(a - b) < _LOG_SERIES_RADIUS * b


@jitable
def log_ratio(a, b):
    """ln(a / b) for positive a, b; within a few ulp of an exact logarithm
    (more accurate than ``math.log(a / b)``, which rounds a / b first)."""
    if is_near(a, b):
        return log_ratio_near(a, b)
    return math.log(a / b)


# --------------------------------------------------------------------------
# Validation


@jitable
def candle_defects(o, h, lo, c, v, check_volume):
    """Reason bits for one candle's prices (ordering is checked by callers)."""
    bad = 0
    if not (math.isfinite(o) and math.isfinite(h) and math.isfinite(lo) and math.isfinite(c)):
        # NaN fails every comparison below, so stop here with one clear reason.
        return BAD_NONFINITE
    if o <= 0.0 or h <= 0.0 or lo <= 0.0 or c <= 0.0:
        bad |= BAD_NONPOSITIVE
    if h < o or h < c:
        bad |= BAD_HIGH
    if lo > o or lo > c:
        bad |= BAD_LOW
    if check_volume and not (math.isfinite(v) and v >= 0.0):
        bad |= BAD_VOLUME
    return bad


@jitable
def candle_ok(o, h, lo, c, v, check_volume):
    """``candle_defects(...) == 0`` without a branch (``&``, not ``and``), so
    that a loop folding it over many candles vectorises."""
    finite = math.isfinite(o) & math.isfinite(h) & math.isfinite(lo) & math.isfinite(c)
    positive = (o > 0.0) & (h > 0.0) & (lo > 0.0) & (c > 0.0)
    ordered = (h >= o) & (h >= c) & (lo <= o) & (lo <= c)
    volume_ok = (not check_volume) | (math.isfinite(v) & (v >= 0.0))
    return finite & positive & ordered & volume_ok


# --------------------------------------------------------------------------
# Volatility


@jitable
def ewm_settle(buf, span, state):
    """Overwrite ``buf`` (log returns, ``buf[0]`` unused) with sigma_t as
    pandas ``ewm(span, adjust=True, min_periods=span).std()``.

    Until the weights reach their floating-point fixed point (a couple of
    thousand bars at span 100) the recurrence mirrors pandas' ``ewmcov``
    step for step, including its guard that leaves the mean untouched when
    the new value equals it (which makes a flat series give exactly 0).
    From then on the weights are constants and the recurrence is rewritten
    as ``mean = a*mean + b*x`` and ``cov = a*cov + ...``: one fused
    multiply-add on each loop-carried chain instead of a chain of five
    operations.  Both recurrences contract, so the rewrite's rounding stays
    within ~1e-14 of pandas instead of compounding.

    This function runs the settling phase and leaves the steady one's
    starting point in ``state`` (6 floats): ``ewm_steady`` continues it on
    one core; the CUDA target continues it as two parallel linear scans.
    """
    n = buf.shape[0]
    state[0] = n
    if n == 0:
        return
    out = buf  # each step reads r_i before writing sigma_i
    out[0] = math.nan
    decay = 1.0 - 2.0 / (span + 1.0)
    mean = math.nan
    cov = 0.0
    sum_wt = 1.0
    sum_wt2 = 1.0
    old_wt = 1.0
    i = 1
    while i < n:
        x = buf[i]
        nobs = i
        settled = False
        if nobs > 1:
            prev = (sum_wt, sum_wt2, old_wt)
            sum_wt *= decay
            sum_wt2 *= decay * decay
            old_wt *= decay
            inv = 1.0 / (old_wt + 1.0)
            old_mean = mean
            if mean != x:
                mean = (old_wt * old_mean + x) * inv
            d_old = old_mean - mean
            d_new = x - mean
            cov = (old_wt * (cov + d_old * d_old) + d_new * d_new) * inv
            sum_wt += 1.0
            sum_wt2 += 1.0
            old_wt += 1.0
            settled = prev[0] == sum_wt and prev[1] == sum_wt2 and prev[2] == old_wt
        else:
            mean = x
        if nobs >= span:
            num = sum_wt * sum_wt
            den = num - sum_wt2
            if den > 0.0:
                var = (num / den) * cov
                out[i] = math.sqrt(var) if var > 0.0 else 0.0
            else:
                out[i] = math.nan
        else:
            out[i] = math.nan
        i += 1
        if settled and nobs >= span:
            break
    # Hand over to the steady phase: state = (next index, mean, cov, a, inv, factor).
    state[0] = i
    state[1] = mean
    state[2] = cov
    w = old_wt * decay  # the weight of the past at every later step
    state[4] = 1.0 / (w + 1.0)
    state[3] = w * state[4]
    num = sum_wt * sum_wt
    den = num - sum_wt2
    state[5] = num / den if den > 0.0 else math.nan


@jitable
def ewm_steady(buf, state):
    """Continue ``ewm_settle`` from ``state`` to the end of ``buf``, in place."""
    n = buf.shape[0]
    i = int(state[0])
    mean = state[1]
    cov = state[2]
    a = state[3]
    inv = state[4]
    factor = state[5]
    while i < n:
        x = buf[i]
        old_mean = mean
        if mean != x:
            mean = a * old_mean + x * inv
        d_old = old_mean - mean
        d_new = x - mean
        cov = a * cov + (a * (d_old * d_old) + inv * (d_new * d_new))
        buf[i] = sigma_from_cov(factor, cov)
        i += 1


@jitable
def sigma_from_cov(factor, cov):
    var = factor * cov
    return math.sqrt(var) if var > 0.0 else 0.0


@jitable
def rolling_sigma_at(close, t, span):
    """Sample std (ddof=1) of the ``span`` log returns ending at ``t``.

    Computed from scratch per row (two passes over the window) rather than
    with a sliding sum: the result then depends only on the window, so any
    chunking of the series, and any target, gives identical values.
    """
    if t < span:
        return math.nan
    first = log_ratio(close[t - span + 1], close[t - span])
    total = 0.0
    same = True
    for i in range(t - span + 1, t + 1):
        r = log_ratio(close[i], close[i - 1])
        total += r
        if r != first:
            same = False
    if same:
        # Identical returns have zero spread; rounding in the mean must not
        # turn that into a tiny positive sigma.
        return 0.0
    mean = total / span
    ss = 0.0
    for i in range(t - span + 1, t + 1):
        d = log_ratio(close[i], close[i - 1]) - mean
        ss += d * d
    return math.sqrt(ss / (span - 1))


# --------------------------------------------------------------------------
# Enhanced triple barrier


@jitable
def first_touch_scan(a, b, high, low, upper, lower):
    """First j in [a, b] whose bar touches a barrier, or b + 1."""
    j = a
    while j <= b:
        if high[j] >= upper or low[j] <= lower:
            return j
        j += 1
    return b + 1


@jitable
def first_touch_table(a, b, high, low, upper, lower, tab_hi, tab_lo, base, levels):
    """First j in [a, b] whose bar touches a barrier, or b + 1, in O(log H).

    ``tab_hi[k - 1, i - base]`` holds ``max(high[i : i + 2**k])`` (``tab_lo``
    the min of ``low``) for k = 1..levels.  Descending from the widest level,
    skip every run whose extremes stay strictly inside both barriers; with
    ``2**(levels + 1) > b - a + 1`` each level is needed at most once, so the
    skipped length is exactly the number of leading bars that touch nothing.
    Max and min are exact, so this finds the same bar as ``first_touch_scan``.
    """
    pos = a
    k = levels
    while k >= 0:
        width = 1 << k
        if pos + width - 1 <= b:
            if k == 0:
                hi = high[pos]
                lw = low[pos]
            else:
                hi = tab_hi[k - 1, pos - base]
                lw = tab_lo[k - 1, pos - base]
            if hi < upper and lw > lower:
                pos += width
        k -= 1
    return pos


# Block extremes for the far-barrier search on devices without per-block
# scratch tables: level 1 covers aligned runs of 32 bars, level 2 of 1024.
L1_SHIFT = 5
L2_SHIFT = 10


@jitable
def first_touch_blocks(a, b, high, low, upper, lower, hi1, lo1, hi2, lo2):
    """First j in [a, b] whose bar touches a barrier, or b + 1, skipping
    aligned runs whose extremes stay inside both barriers.  O(64 + H/1024)
    steps instead of O(H); max and min are exact, so it finds the same bar
    as ``first_touch_scan``."""
    w1 = 1 << L1_SHIFT
    w2 = 1 << L2_SHIFT
    pos = a
    while pos <= b:
        if (pos & (w2 - 1)) == 0 and pos + w2 - 1 <= b:
            k = pos >> L2_SHIFT
            if hi2[k] < upper and lo2[k] > lower:
                pos += w2
                continue
        if (pos & (w1 - 1)) == 0 and pos + w1 - 1 <= b:
            k = pos >> L1_SHIFT
            if hi1[k] < upper and lo1[k] > lower:
                pos += w1
                continue
        if high[pos] >= upper or low[pos] <= lower:
            return pos
        pos += 1
    return b + 1


@jitable
def tb_exit_at(o, hi, lo, cj, upper, lower, tie_phys):
    """(physical label, exit price, flags) of an exit on a bar known to
    touch a barrier, from that bar's open, high, low and close.

    Written as selects rather than if/else: which barrier a random walk
    hits is a coin flip, and mispredicted branches would cost more than all
    the arithmetic here.  ``tie_phys`` is the barrier an ambiguous bar exits
    at (-1 lower, +1 upper, 0 neither: tie="skip").
    """
    gap_up = o >= upper
    gap_dn = o <= lower
    gap = gap_up | gap_dn
    up = hi >= upper
    dn = lo <= lower
    amb = up & dn
    lab = tie_phys if amb else (1 if up else -1)
    price = upper if lab == 1 else (lower if lab == -1 else cj)
    lab = 1 if gap_up else (-1 if gap_dn else lab)
    price = o if gap else price
    flag = FLAG_GAP if gap else (FLAG_AMBIGUOUS if amb else 0)
    return lab, price, flag


@jitable
def tb_vertical_at(t, n, horizon, close, vertical, min_ret):
    """(physical label, return, complete) of a row whose window touched no
    barrier: the vertical exit at close_{t+H}, or incomplete (False)."""
    if t + horizon > n - 1:
        return 0, math.nan, False
    lab, ret = grid_vertical(close[t], close[t + horizon], True, vertical, min_ret)
    return lab, ret, True


@jitable
def tb_write_exit(t, j, open_, high, low, close, upper, lower, tie_label, side,
                  label, barrier, exit_bars, exit_ret, flags):
    """Fill row t for an exit on bar j (a bar known to touch a barrier).

    ``tie_label`` is the label an ambiguous bar gets (-1 for tie="sl", +1 for
    "tp", 0 for "skip"); ``side`` the row's position (+1 without sides): the
    barrier stays physical, the label is relative to the side, so the stop
    of a short is the upper barrier.
    """
    lab, price, flag = tb_exit_at(open_[j], high[j], low[j], close[j], upper, lower,
                                  tie_label * side)
    label[t] = lab * side
    barrier[t] = lab
    exit_bars[t] = j - t
    exit_ret[t] = price / close[t] - 1.0
    flags[t] = flag


@jitable
def tb_write_no_exit(t, n, horizon, close, vertical, min_ret, side,
                     label, barrier, exit_bars, exit_ret, flags):
    """Fill row t when no bar in its window touched a barrier."""
    lab, ret, complete = tb_vertical_at(t, n, horizon, close, vertical, min_ret)
    label[t] = lab * side
    barrier[t] = 0
    exit_bars[t] = horizon if complete else 0
    exit_ret[t] = ret
    flags[t] = 0 if complete else FLAG_INCOMPLETE


@jitable
def tb_write_outcome(t, j, last, n, horizon, open_, high, low, close, upper, lower, tie_label,
                     vertical, min_ret, side, label, barrier, exit_bars, exit_ret, flags):
    """Fill row t once its search is over: an exit on bar j when j <= last,
    else the vertical barrier (or incomplete)."""
    if j <= last:
        tb_write_exit(t, j, open_, high, low, close, upper, lower, tie_label, side,
                      label, barrier, exit_bars, exit_ret, flags)
    else:
        tb_write_no_exit(t, n, horizon, close, vertical, min_ret, side,
                         label, barrier, exit_bars, exit_ret, flags)


@jitable
def tb_write_no_vol(t, label, barrier, exit_bars, exit_ret, flags):
    tb_write_null(t, FLAG_NO_VOL, label, barrier, exit_bars, exit_ret, flags)


@jitable
def tb_write_null(t, flag, label, barrier, exit_bars, exit_ret, flags):
    label[t] = 0
    barrier[t] = 0
    exit_bars[t] = 0
    exit_ret[t] = math.nan
    flags[t] = flag


@jitable
def upper_level(c0, sig, width):
    return c0 * (1.0 + width * sig)


@jitable
def lower_level(c0, sig, width):
    return c0 * (1.0 - width * sig)


@jitable
def tb_bounds(c0, sig, pt, sl):
    return upper_level(c0, sig, pt), lower_level(c0, sig, sl)


@jitable
def tb_side_bounds(c0, sig, pt, sl, side):
    """Upper and lower barrier of a position: a short's profit target is
    below (``pt`` sigmas) and its stop above (``sl``).

    The widths are picked by arithmetic, exact since x * 1 + y * 0 == x for
    finite widths: sides from a model alternate unpredictably, and the
    compiler turned a select here into a branch that cost 25% of the
    triple barrier on random sides."""
    short = (side < 0) * 1.0
    long_ = 1.0 - short
    return (upper_level(c0, sig, pt * long_ + sl * short),
            lower_level(c0, sig, sl * long_ + pt * short))


@jitable
def tb_row_start(t, n, close, sigma, side, sided, horizon, direct, pt, sl,
                 label, barrier, exit_bars, exit_ret, flags):
    """The start of row t's walk, shared by the CPU and CUDA targets:
    ``(sd, upper, lower, last, near)``, with ``sd`` 0 when the row is
    already written (no position, or no volatility) and has nothing to walk.
    ``last`` is the window's last bar and ``near`` the last one scanned bar
    by bar before the targets switch to their own search."""
    sd = 1
    if sided:
        sd = side_of(side, t)
        if sd == 0:
            tb_write_null(t, FLAG_NO_SIDE, label, barrier, exit_bars, exit_ret, flags)
            return 0, 0.0, 0.0, 0, 0
    sig = sigma[t]
    if not (sig > 0.0):
        tb_write_no_vol(t, label, barrier, exit_bars, exit_ret, flags)
        return 0, 0.0, 0.0, 0, 0
    upper, lower = tb_side_bounds(close[t], sig, pt, sl, sd)
    last = min(t + horizon, n - 1)
    return sd, upper, lower, last, min(t + direct, last)


@jitable
def side_of(side, t):
    """The position at row t: +1, -1, or 0 for none (``side`` holds int8
    positions, see ``kernels.cpu.positions``)."""
    return int(side[t])


@jitable
def meta_at(t, side, exit_ret, meta):
    """tb_meta: 1 when the bet on side s_t made money (s_t * return > 0).
    A NULL return (NaN) gives 0, masked by the caller."""
    meta[t] = 1 if side[t] * exit_ret[t] > 0.0 else 0


# --------------------------------------------------------------------------
# Barrier grid: every (pt, sl, horizon) of a row from one walk.
#
# Upper levels rise with pt and lower ones fall with sl (rounding is
# monotone), so one walk through a row's window, always looking for the
# next bar that touches the lowest upper or the highest lower level not yet
# touched, finds the first touch of every distinct level once.  A
# combination (pt_i, sl_k, h) then exits at the earlier of the two first
# touches when that lies within h bars: exactly the bar the single triple
# barrier's walk stops at, and the same arithmetic decides the rest.


@jitable
def grid_search(pos, last, high, low, upper, lower, search, direct, tab_hi, tab_lo, base, levels,
                hi1, lo1, hi2, lo2):
    """First j in [pos, last] touching ``upper`` or ``lower``, or last + 1:
    ``direct`` bars one by one, then by ``search`` (see kernels.flags)."""
    near = min(pos + direct - 1, last)
    j = first_touch_scan(pos, near, high, low, upper, lower)
    if j <= near or near == last:
        return j
    if search == SEARCH_TABLE:
        return first_touch_table(near + 1, last, high, low, upper, lower, tab_hi, tab_lo, base,
                                 levels)
    if search == SEARCH_BLOCKS:
        return first_touch_blocks(near + 1, last, high, low, upper, lower, hi1, lo1, hi2, lo2)
    return first_touch_scan(near + 1, last, high, low, upper, lower)


@jitable
def grid_vertical(c0, c_h, complete, vertical, min_ret):
    """``tb_vertical_at`` from the prices themselves: (physical label,
    return) of the vertical exit at ``c_h``, (0, NaN) when incomplete."""
    if not complete:
        return 0, math.nan
    ret = c_h / c0 - 1.0
    lab = 0
    if vertical == VERTICAL_SIGN and abs(ret) >= min_ret:
        if ret > 0.0:
            lab = 1
        elif ret < 0.0:
            lab = -1
    return lab, ret


@jitable
def grid_rows(s, e, n, open_, high, low, close, sigma, pts, sls, horizons, up_ord, lo_ord,
              up_lv, lo_lv, up_first, lo_first, v_lab, v_ret, v_bars, v_flag, tie_label, vertical,
              min_ret, search, direct, tab_hi, tab_lo, base, levels, hi1, lo1, hi2, lo2,
              label, exit_bars, exit_ret, flags):
    """Every combination of rows s .. e-1, row t at flat positions
    t*G .. t*G + G - 1 of the outputs (pts outer, sls, horizons inner); each
    element what the triple barrier with that (pt, sl, horizon) writes.

    Per row: the vertical exit of each horizon (scratch ``v_*``, one element
    a horizon), the levels, then the first touch of every level
    (``up_first``, ``lo_first``; past the window: ``t + hmax + 1``) from one
    walk, and every (pt, sl) pair read off them.  The walk goes bar by bar
    for ``direct`` bars, then by ``grid_search``; it stops once every upper
    or every lower level is touched (the widest one is), since each pair
    then has its exit.  ``up_ord`` lists the upper levels from the lowest,
    ``lo_ord`` the lower ones from the highest.

    A block of rows a call, and indices as unsigned integers, because on the
    CPU each call with arrays and each signed index costs: a call a row
    (reference counts of ~30 arrays) took 3/4 of the kernel's time, and the
    sign checks a quarter of the rest."""
    P = pts.shape[0]
    S = sls.shape[0]
    NH = horizons.shape[0]
    G = P * S * NH
    hmax = 0
    for m in range(NH):
        hmax = max(hmax, horizons[m])
    for t in range(s, e):
        q = uint64(t * G)
        sig = sigma[t]
        if not (sig > 0.0):
            for _ in range(G):
                label[q] = 0
                exit_bars[q] = 0
                exit_ret[q] = math.nan
                flags[q] = FLAG_NO_VOL
                q += uint64(1)
            continue
        c0 = close[t]
        for m in range(NH):
            h = horizons[m]
            complete = t + h <= n - 1
            lab, ret = grid_vertical(c0, close[uint64(min(t + h, n - 1))], complete, vertical,
                                     min_ret)
            v_lab[m] = lab
            v_ret[m] = ret
            v_bars[m] = h if complete else 0
            v_flag[m] = 0 if complete else FLAG_INCOMPLETE
        never = t + hmax + 1
        for i in range(P):
            up_lv[i] = upper_level(c0, sig, pts[i])
            up_first[i] = never
        for k in range(S):
            lo_lv[k] = lower_level(c0, sig, sls[k])
            lo_first[k] = never
        last = min(t + hmax, n - 1)
        # The walk: ru / rl count the upper / lower levels touched so far.
        ru = 0
        rl = 0
        next_up = up_lv[up_ord[0]]
        next_lo = lo_lv[lo_ord[0]]
        near = min(t + direct, last)
        j = t + 1
        while j <= near:
            hj = high[uint64(j)]
            lj = low[uint64(j)]
            if hj >= next_up or lj <= next_lo:
                while ru < P and hj >= up_lv[up_ord[ru]]:
                    up_first[up_ord[ru]] = j
                    ru += 1
                while rl < S and lj <= lo_lv[lo_ord[rl]]:
                    lo_first[lo_ord[rl]] = j
                    rl += 1
                if ru == P or rl == S:
                    break
                next_up = up_lv[up_ord[ru]]
                next_lo = lo_lv[lo_ord[rl]]
            j += 1
        if j > near:
            while j <= last and ru < P and rl < S:
                j = grid_search(j, last, high, low, up_lv[up_ord[ru]], lo_lv[lo_ord[rl]], search,
                                direct, tab_hi, tab_lo, base, levels, hi1, lo1, hi2, lo2)
                if j > last:
                    break
                hj = high[uint64(j)]
                while ru < P and hj >= up_lv[up_ord[ru]]:
                    up_first[up_ord[ru]] = j
                    ru += 1
                lj = low[uint64(j)]
                while rl < S and lj <= lo_lv[lo_ord[rl]]:
                    lo_first[lo_ord[rl]] = j
                    rl += 1
                j += 1
        for i in range(P):
            for k in range(S):
                j = min(up_first[i], lo_first[k])
                e_lab = 0
                e_ret = math.nan
                e_flag = 0
                bars = j - t  # > every horizon when neither level was touched
                if j <= last:
                    ju = uint64(j)
                    e_lab, price, e_flag = tb_exit_at(open_[ju], high[ju], low[ju], close[ju],
                                                      up_lv[i], lo_lv[k], tie_label)
                    e_ret = price / c0 - 1.0
                for m in range(NH):
                    # Selects: whether the exit lies within a horizon is data-dependent.
                    exits = bars <= horizons[m]
                    label[q] = e_lab if exits else v_lab[m]
                    exit_bars[q] = bars if exits else v_bars[m]
                    exit_ret[q] = e_ret if exits else v_ret[m]
                    flags[q] = e_flag if exits else v_flag[m]
                    q += uint64(1)


# --------------------------------------------------------------------------
# Volatility-scaled forward return


@jitable
def vsr_at(close, sigma, t, h):
    n = close.shape[0]
    s = sigma[t]
    if t + h > n - 1 or not (s > 0.0):
        return math.nan
    return log_ratio(close[t + h], close[t]) / (s * math.sqrt(h))


@jitable
def vsr_near_values(ahead, now, sig, sqrt_h):
    """vsr_at without its checks, for rows known to have a window and a
    price move inside the log series' radius (callers patch the rest):
    ``ahead`` is close[t + h], ``now`` close[t], ``sig`` sigma[t]."""
    return log_ratio_near(ahead, now) / (sig * sqrt_h)


# --------------------------------------------------------------------------
# Maximum favourable / adverse excursion (van Herk / Gil-Werman)
#
# Window extremes over [t+1, t+H] in O(1) per row whatever H: split the
# values into aligned runs of length H; every window is a suffix of one run
# plus a prefix of the next.  Ties keep the earliest bar, as the contract asks.


@jitable
def run_extremes(x, start, stop, width, base, suf_val, suf_idx, pre_val, pre_idx, is_max):
    """For runs of ``width`` from ``start`` to ``stop``: suffix and prefix
    maxima (``is_max``, else minima) of x within each run (value, first index), stored at i - base."""
    r0 = start
    while r0 < stop:
        r1 = min(r0 + width, stop)
        best = x[r0]
        at = r0
        for i in range(r0, r1):
            xi = x[i]
            take = xi > best if is_max else xi < best
            best = xi if take else best
            at = i if take else at
            pre_val[i - base] = best
            pre_idx[i - base] = at
        best = x[r1 - 1]
        at = r1 - 1
        for i in range(r1 - 1, r0 - 1, -1):
            xi = x[i]
            take = xi >= best if is_max else xi <= best  # moving left: an equal value is earlier
            best = xi if take else best
            at = i if take else at
            suf_val[i - base] = best
            suf_idx[i - base] = at
        r0 = r1


@jitable
def window_ext(a, width, start, aligned, suf_val, suf_idx, pre_val, pre_idx, is_max):
    """(value, first index) of max (``is_max``) or min of x[a : a + width];
    ``aligned``: a starts a run.  The prefix lies later: it wins only when
    strictly better, so ties go to the first bar."""
    sv = suf_val[a - start]
    si = suf_idx[a - start]
    if aligned:
        return sv, si
    pv = pre_val[a + width - 1 - start]
    pi = pre_idx[a + width - 1 - start]
    take = pv > sv if is_max else pv < sv
    return (pv if take else sv), (pi if take else si)


# --------------------------------------------------------------------------
# Ambiguous bars resolved from finer candles (enhanced_triple_barrier,
# resolve_with).  A bar j that touched both barriers is replayed on the finer
# candles inside it, with the same barriers.



@jitable
def tb_resolve_at(r, rows, exit_bars, f_start, f_end, f_open, f_high, f_low, close, sigma, side,
                  sided, pt, sl, label, barrier, exit_ret, flags):
    """``tb_resolve_row`` for the r-th ambiguous row: its side, its barriers
    and its finer candles; the same call on every target."""
    t = rows[r]
    s = side_of(side, t) if sided else 1
    upper, lower = tb_side_bounds(close[t], sigma[t], pt, sl, s)
    return tb_resolve_row(t, t + exit_bars[t], f_start[r], f_end[r], f_open, f_high, f_low, close,
                          upper, lower, s, label, barrier, exit_ret, flags)


@jitable
def tb_resolve_row(t, j, fs, fe, f_open, f_high, f_low, close, upper, lower, side,
                   label, barrier, exit_ret, flags):
    """Rewrite row t, whose exit bar j was ambiguous, from the finer candles
    ``fs .. fe - 1`` (those inside bar j, in time order).  The exit bar, and
    so ``exit_bars``, stays j; label, barrier, return and flags follow the
    first finer candle that reaches a barrier.  Returns 1 when the bar was
    decided (RESOLVED), 0 when it stays ambiguous and the tie rule stands.
    ``side``: the row's position (+1 without sides); the label is relative
    to it."""
    k = fs
    while k < fe:
        o = f_open[k]
        if o >= upper or o <= lower:
            lab = 1 if o >= upper else -1
            label[t] = lab * side
            barrier[t] = lab
            exit_ret[t] = o / close[t] - 1.0
            flags[t] = FLAG_GAP | FLAG_RESOLVED
            return 1
        up = f_high[k] >= upper
        dn = f_low[k] <= lower
        if up and dn:
            return 0  # still ambiguous at the finer level: the tie rule already written stands
        if up or dn:
            lab = 1 if up else -1
            label[t] = lab * side
            barrier[t] = lab
            exit_ret[t] = (upper if up else lower) / close[t] - 1.0
            flags[t] = FLAG_RESOLVED
            return 1
        k += 1
    return 0


# --------------------------------------------------------------------------
# Sample weights (AFML ch. 4): concurrency, uniqueness, return attribution.
# An event is a row with a defined label (with sides: one with a position);
# it is exposed to bars
# i+1 .. i+e_i.  Counting events per bar directly (not with a running
# cumulative sum) keeps every bar's count independent of where a series is
# cut, and lets every target compute any bar on its own.


@jitable
def is_event(flags_i):
    return (flags_i & (FLAG_INCOMPLETE | FLAG_NO_VOL | FLAG_NO_SIDE)) == 0


@jitable
def concurrency_at(j, flags, exit_bars, horizon):
    """c_j: events i with i < j <= i + e_i (e_i <= horizon, so i >= j - horizon)."""
    c = 0
    i = j - horizon
    if i < 0:
        i = 0
    while i < j:
        if is_event(flags[i]) and i + exit_bars[i] >= j:
            c += 1
        i += 1
    return c


@jitable
def weights_at(i, n, horizon, flags, exit_bars, conc, close, out_u, out_a):
    """tb_uniqueness and tb_attribution of row i (NaN where undefined)."""
    e = exit_bars[i]
    if not is_event(flags[i]) or i + e - 1 + horizon > n - 1:
        out_u[i] = math.nan
        out_a[i] = math.nan
        return
    su = 0.0
    sa = 0.0
    for j in range(i + 1, i + e + 1):
        inv = 1.0 / conc[j]
        su += inv
        sa += log_ratio(close[j], close[j - 1]) * inv
    out_u[i] = su / e
    out_a[i] = abs(sa)


# --------------------------------------------------------------------------
# Fixed-horizon label


@jitable
def fixed_horizon_at(close, sigma, t, h, k, sqrt_h, label, ret):
    """fh_label and fh_return of row t; returns 1 when defined, else 0.
    With k > 0 the threshold is k * sigma_t * sqrt(h) and needs sigma_t."""
    n = close.shape[0]
    if t + h > n - 1:
        label[t] = 0
        ret[t] = math.nan
        return 0
    band = 0.0
    if k > 0.0:
        s = sigma[t]
        if not (s > 0.0):
            label[t] = 0
            ret[t] = math.nan
            return 0
        band = k * s * sqrt_h
    r = log_ratio(close[t + h], close[t])
    label[t] = 1 if r > band else (-1 if r < -band else 0)
    ret[t] = r
    return 1


# --------------------------------------------------------------------------
# Trend scanning


@jitable
def _ols_two_pass(logc, t, L):
    """(centred Sxy, RSS) of the window t .. t+L-1 from its means and residuals."""
    y0 = logc[t]
    ym = 0.0
    for x in range(L):
        ym += logc[t + x] - y0
    ym /= L
    xm = 0.5 * (L - 1)
    sxx = 0.0
    sxy = 0.0
    for x in range(L):
        dx = x - xm
        sxx += dx * dx
        sxy += dx * (logc[t + x] - y0 - ym)
    b = sxy / sxx
    rss = 0.0
    for x in range(L):
        e = (logc[t + x] - y0 - ym) - b * (x - xm)
        rss += e * e
    return sxy, rss


@jitable
def trend_constants(w_max, consts):
    """Per window length L (row L of ``consts``): 1/L, (L-1)/2, Sxx and
    (L-2)/Sxx, so the scan's inner loop needs no division."""
    for L in range(1, w_max + 1):
        fl = float(L)
        sxx = fl * (fl * fl - 1.0) / 12.0
        consts[L, 0] = 1.0 / fl
        consts[L, 1] = 0.5 * (fl - 1.0)
        consts[L, 2] = sxx
        consts[L, 3] = (fl - 2.0) / sxx if sxx > 0.0 else 0.0


@jitable
def trend_scan_at(logc, t, w_min, w_max, consts, label, tvalue, window):
    """OLS of y_x = ln close_{t+x} on x = 0..L-1 for every L in w_min..w_max;
    keeps the largest |t-value| (the shortest window on ties).

    The sums grow one bar at a time, so all windows of a row cost O(w_max).
    y is taken relative to y_0 (the sums then hold price moves, not price
    levels, and do not cancel), and x about its mean through the closed forms
    Sxx = L(L^2-1)/12 and Sxy = sum(x*y) - (L-1)/2 * sum(y).  RSS = Syy - Sxy^2/Sxx
    loses about log10(1 + t^2/(L-2)) digits to cancellation; a window where it
    would lose more than nine is recomputed from its residuals.  Windows are
    compared by t^2 = Sxy^2 (L-2) / (Sxx RSS) as cross-multiplied fractions,
    so the loop divides nothing.  A window with all closes equal has exact
    zero sums: RSS = 0, no t-value.  Returns 1 when some window has a t-value.
    """
    n = logc.shape[0]
    if t + w_max - 1 > n - 1:
        label[t] = 0
        tvalue[t] = math.nan
        window[t] = 0
        return 0
    y0 = logc[t]
    sy = 0.0
    sxy = 0.0
    syy = 0.0
    best_num = -1.0  # the best t^2 as best_num / best_den (none yet: below any)
    best_den = 1.0
    best_cxy = 0.0
    best_l = 0
    for x in range(w_max):
        y = logc[t + x] - y0
        sy += y
        sxy += x * y
        syy += y * y
        L = x + 1
        if L < w_min or syy == 0.0:
            continue  # too short, or every close so far equal to close_t (no t-value)
        cxy = sxy - consts[L, 1] * sy
        cyy = syy - sy * sy * consts[L, 0]
        sxx = consts[L, 2]
        rss_sxx = cyy * sxx - cxy * cxy  # RSS * Sxx
        if not (rss_sxx > 1e-9 * cyy * sxx):
            # Nearly on a line: the subtraction has lost most digits, so
            # take the residuals themselves (rare; O(L)).
            cxy, rss = _ols_two_pass(logc, t, L)
            if not (rss > 0.0):
                continue
            rss_sxx = rss * sxx
        num = cxy * cxy * (L - 2.0)  # t^2 = num / rss_sxx
        # Selects, not a branch: which window wins is data-dependent, and a
        # mispredicted branch per window would cost more than the arithmetic.
        better = num * best_den > best_num * rss_sxx
        best_num = num if better else best_num
        best_den = rss_sxx if better else best_den
        best_cxy = cxy if better else best_cxy
        best_l = L if better else best_l
    if best_l == 0:
        label[t] = 0
        tvalue[t] = math.nan
        window[t] = 0
        return 0
    tv = math.sqrt(best_num / best_den)
    if best_cxy < 0.0:
        tv = -tv
    label[t] = 1 if best_cxy > 0.0 else (-1 if best_cxy < 0.0 else 0)
    tvalue[t] = tv if best_cxy != 0.0 else 0.0
    window[t] = best_l
    return 1
