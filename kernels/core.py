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

# Triple-barrier flag bits (tb_flags).  Part of the storage format.
FLAG_GAP = 1
FLAG_AMBIGUOUS = 2
FLAG_INCOMPLETE = 4
FLAG_NO_VOL = 8

# Integer codes for string parameters; kernels take ints, not strings.
TIE_SL = 0
TIE_TP = 1
TIE_SKIP = 2
VERTICAL_ZERO = 0
VERTICAL_SIGN = 1

# Candle validation reason bits (see ``candle_defects``).
BAD_NONFINITE = 1
BAD_NONPOSITIVE = 2
BAD_HIGH = 4
BAD_LOW = 8
BAD_TS_ORDER = 16
BAD_VOLUME = 32


# --------------------------------------------------------------------------
# Log returns

# Beyond this |x - 1| the series below needs too many terms; fall back to libm.
_LOG_SERIES_RADIUS = 0.02


@register_jitable
def log_ratio(a, b):
    """ln(a / b) for positive a, b; within a few ulp of ``math.log(a / b)``.

    Candle-to-candle ratios are nearly always within 2% of 1, where
    ln(a/b) = 2 atanh(z), z = (a - b) / (a + b), and the odd series in z
    converges to double precision in six terms.  That is several times
    cheaper than a libm call and it is the hottest operation of the
    volatility and forward-return labels.
    """
    diff = a - b  # exact when a and b are within a factor 2 (Sterbenz)
    if abs(diff) < _LOG_SERIES_RADIUS * b:
        z = diff / (a + b)
        u = z * z
        p = 1.0 / 13.0
        p = p * u + 1.0 / 11.0
        p = p * u + 1.0 / 9.0
        p = p * u + 1.0 / 7.0
        p = p * u + 1.0 / 5.0
        p = p * u + 1.0 / 3.0
        return 2.0 * z * (p * u + 1.0)
    return math.log(a / b)


# --------------------------------------------------------------------------
# Validation


@register_jitable
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


# --------------------------------------------------------------------------
# Volatility


@register_jitable
def ewm_sigma_into(close, span, out):
    """sigma_t as pandas ``ewm(span, adjust=True, min_periods=span).std()``.

    The recurrence mirrors pandas' ``ewmcov`` step for step (including its
    guard that leaves the mean untouched when the new value equals it, which
    is what makes a flat series give exactly 0) so results agree to rounding.
    """
    n = close.shape[0]
    if n == 0:
        return
    out[0] = math.nan
    alpha = 2.0 / (span + 1.0)
    decay = 1.0 - alpha
    mean = math.nan
    cov = 0.0
    sum_wt = 1.0
    sum_wt2 = 1.0
    old_wt = 1.0
    nobs = 0
    for i in range(1, n):
        x = log_ratio(close[i], close[i - 1])
        nobs += 1
        if nobs > 1:
            sum_wt *= decay
            sum_wt2 *= decay * decay
            old_wt *= decay
            # One reciprocal instead of pandas' two divisions: old_wt does not
            # depend on the data, so this stays off the critical path.
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


@register_jitable
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


@register_jitable
def bar_touches(h, lo, upper, lower):
    """True when a bar reaches either barrier (a gap open implies this too,
    because high >= open >= upper or low <= open <= lower)."""
    return h >= upper or lo <= lower


@register_jitable
def first_touch_scan(a, b, high, low, upper, lower):
    """First j in [a, b] whose bar touches a barrier, or b + 1."""
    j = a
    while j <= b:
        if high[j] >= upper or low[j] <= lower:
            return j
        j += 1
    return b + 1


@register_jitable
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


@register_jitable
def tb_write_exit(t, j, open_, high, low, close, upper, lower, tie,
                  label, barrier, exit_bars, exit_ret, flags):
    """Fill row t for an exit on bar j (a bar known to touch a barrier)."""
    c0 = close[t]
    o = open_[j]
    f = 0
    if o >= upper:
        lab = 1
        bar = 1
        price = o
        f = FLAG_GAP
    elif o <= lower:
        lab = -1
        bar = -1
        price = o
        f = FLAG_GAP
    else:
        up = high[j] >= upper
        dn = low[j] <= lower
        if up and dn:
            f = FLAG_AMBIGUOUS
            if tie == TIE_SL:
                lab = -1
                bar = -1
                price = lower
            elif tie == TIE_TP:
                lab = 1
                bar = 1
                price = upper
            else:
                lab = 0
                bar = 0
                price = close[j]
        elif up:
            lab = 1
            bar = 1
            price = upper
        else:
            lab = -1
            bar = -1
            price = lower
    label[t] = lab
    barrier[t] = bar
    exit_bars[t] = j - t
    exit_ret[t] = price / c0 - 1.0
    flags[t] = f


@register_jitable
def tb_write_no_exit(t, n, horizon, close, vertical, min_ret,
                     label, barrier, exit_bars, exit_ret, flags):
    """Fill row t when no bar in its window touched a barrier."""
    if t + horizon > n - 1:
        label[t] = 0
        barrier[t] = 0
        exit_bars[t] = 0
        exit_ret[t] = math.nan
        flags[t] = FLAG_INCOMPLETE
        return
    ret = close[t + horizon] / close[t] - 1.0
    lab = 0
    if vertical == VERTICAL_SIGN and abs(ret) >= min_ret:
        if ret > 0.0:
            lab = 1
        elif ret < 0.0:
            lab = -1
    label[t] = lab
    barrier[t] = 0
    exit_bars[t] = horizon
    exit_ret[t] = ret
    flags[t] = 0


@register_jitable
def tb_write_no_vol(t, label, barrier, exit_bars, exit_ret, flags):
    label[t] = 0
    barrier[t] = 0
    exit_bars[t] = 0
    exit_ret[t] = math.nan
    flags[t] = FLAG_NO_VOL


@register_jitable
def tb_bounds(c0, sig, pt, sl):
    return c0 * (1.0 + pt * sig), c0 * (1.0 - sl * sig)


# --------------------------------------------------------------------------
# Volatility-scaled forward return


@register_jitable
def vsr_at(close, sigma, t, h):
    n = close.shape[0]
    s = sigma[t]
    if t + h > n - 1 or not (s > 0.0):
        return math.nan
    return log_ratio(close[t + h], close[t]) / (s * math.sqrt(h))


# --------------------------------------------------------------------------
# Maximum favourable / adverse excursion (van Herk / Gil-Werman)
#
# Window extremes over [t+1, t+H] in O(1) per row whatever H: split the
# values into aligned runs of length H; every window is a suffix of one run
# plus a prefix of the next.  Ties keep the earliest bar, as the contract asks.


@register_jitable
def run_extremes(x, start, stop, width, is_max, suf_val, suf_idx, pre_val, pre_idx):
    """For runs of ``width`` starting at ``start``: suffix and prefix extremes
    (value and index) of x within each run, stored at offset i - start."""
    r0 = start
    while r0 < stop:
        r1 = min(r0 + width, stop)
        best = x[r0]
        at = r0
        for i in range(r0, r1):
            xi = x[i]
            if (xi > best) if is_max else (xi < best):
                best = xi
                at = i
            pre_val[i - start] = best
            pre_idx[i - start] = at
        best = x[r1 - 1]
        at = r1 - 1
        for i in range(r1 - 1, r0 - 1, -1):
            xi = x[i]
            if (xi >= best) if is_max else (xi <= best):
                best = xi
                at = i
            suf_val[i - start] = best
            suf_idx[i - start] = at
        r0 = r1


@register_jitable
def window_extreme(a, width, start, aligned, is_max, suf_val, suf_idx, pre_val, pre_idx):
    """(value, index) of the extreme of x[a : a + width], earliest on ties;
    ``aligned`` says a begins a run."""
    sv = suf_val[a - start]
    si = suf_idx[a - start]
    if aligned:
        return sv, si
    b = a + width - 1
    pv = pre_val[b - start]
    pi = pre_idx[b - start]
    if (pv > sv) if is_max else (pv < sv):
        return pv, pi
    return sv, si
