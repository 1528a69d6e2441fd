"""CUDA launchers: numba-cuda kernels over the per-candle math in ``core``.

This and ``cuda_transfer`` (pinned staging copies) are the only modules
that import ``numba.cuda`` (numba-cuda is in maintenance; its successor can
replace it there alone).  Kernels take any
array with ``__cuda_array_interface__`` (numba device arrays, CuPy arrays,
cuDF columns with nulls filled) and return numba device arrays.  Functions
mirror ``kernels.cpu`` so the label modules call either the same way.

Importing this module does not initialise CUDA; launching a kernel does.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from . import core, cpu
from .flags import MAX_COMBINATIONS

# compute_series moves a series to the device through pinned staging buffers
# (compute/staging.py) and copies the results back the same way.
ON_DEVICE = True
THREADS = 256
# Segment length of the parallel linear-recurrence scan (sigma's ewm): one
# thread's, staged in shared memory with its block's (256 rows of 17 float64:
# 34 KB).
SCAN_SEGMENT = 16
SCAN_PAD = SCAN_SEGMENT + 1
SCAN_TILE = THREADS * SCAN_SEGMENT
SCAN_SHARED = THREADS * SCAN_PAD  # a shared array's size must be one constant
# First prefix copied to the host for sigma's settling phase (grown if short).
SETTLE_PREFIX = 8192
# MFE/MAE scan each window directly from a tile in shared memory up to this
# horizon (one block's MFE_TILE_ROWS rows and their windows fit in MFE_TILE);
# longer horizons use van Herk/Gil-Werman runs in device memory.
MFE_DIRECT_MAX = 256
# Consecutive rows per thread in that scan (odd: neighbouring threads' reads
# of shared float64 then fall in distinct banks).  Horizons below it use runs.
MFE_ROWS = 5
MFE_TILE_ROWS = THREADS * MFE_ROWS
MFE_TILE = MFE_TILE_ROWS + MFE_DIRECT_MAX


def unavailable_reason() -> str | None:
    """Why kernels cannot launch here (no driver, no device), or None."""
    try:
        if not cuda.is_available():
            return "no CUDA device or driver was found (numba.cuda.is_available() is False)"
    except Exception as exc:  # a driver that is present but broken
        return f"the CUDA driver failed to initialise: {exc}"
    return None


def _blocks(n: int) -> int:
    return max(1, min((n + THREADS - 1) // THREADS, 65_535 * 16))


def as_device(x):
    """x on the device: host arrays are copied, device arrays (anything with
    ``__cuda_array_interface__``, which kernels accept as is) pass through."""
    if isinstance(x, np.ndarray):
        return cuda.to_device(np.ascontiguousarray(x))
    return x


def columns_to_device(columns: dict[str, np.ndarray]) -> dict:
    """Host float64 columns on the device, by the best route installed:
    cuDF (``DataFrame.from_arrow``), else CuPy arrays, else numba device
    arrays.  Returns arrays the kernels accept as they are."""
    try:
        import cudf
        import pyarrow as pa

        frame = cudf.DataFrame.from_arrow(pa.table(columns))
        return {name: frame[name].values for name in columns}
    except ImportError:
        pass
    try:
        import cupy

        return {name: cupy.asarray(col) for name, col in columns.items()}
    except ImportError:
        return {name: cuda.to_device(np.ascontiguousarray(col)) for name, col in columns.items()}


def to_host(x) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    return cuda.as_cuda_array(x).copy_to_host()


# --------------------------------------------------------------------------
# Volatility


@cuda.jit
def _log_returns_kernel(close, out):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(start, close.shape[0], step):
        out[t] = math.nan if t == 0 else core.log_ratio(close[t], close[t - 1])


def log_returns(close):
    close = as_device(close)
    out = cuda.device_array(close.shape[0], np.float64)
    _log_returns_kernel[_blocks(close.shape[0]), THREADS](close, out)
    return out


@cuda.jit
def _scan_local(u, a, start, y, ends):
    """Each thread: y = a*y + u over one segment from 0, and its end value.

    A block's THREADS segments go through shared memory (rows padded to an
    odd length: the threads' rows then start in distinct banks), so global
    loads and stores are coalesced; a thread walking its own segment in
    device memory touched a new cache line at every step of every thread."""
    sh = cuda.shared.array(SCAN_SHARED, np.float64)
    n = u.shape[0]
    tid = cuda.threadIdx.x
    for tile in range(cuda.blockIdx.x, (n - start + SCAN_TILE - 1) // SCAN_TILE, cuda.gridDim.x):
        base = start + tile * SCAN_TILE
        for k in range(tid, SCAN_TILE, THREADS):
            t = base + k
            sh[(k // SCAN_SEGMENT) * SCAN_PAD + k % SCAN_SEGMENT] = u[t] if t < n else 0.0
        cuda.syncthreads()
        row = tid * SCAN_PAD
        acc = 0.0
        for k in range(SCAN_SEGMENT):
            acc = a * acc + sh[row + k]
            sh[row + k] = acc
        j = tile * THREADS + tid
        if j < ends.shape[0]:
            ends[j] = acc  # a last, partial segment's is never read
        cuda.syncthreads()
        for k in range(tid, SCAN_TILE, THREADS):
            t = base + k
            if t < n:
                y[t] = sh[(k // SCAN_SEGMENT) * SCAN_PAD + k % SCAN_SEGMENT]
        cuda.syncthreads()


@cuda.jit
def _scan_fixup(y, a, start, seg, carries):
    """y_t += a^(t - segment start + 1) * (value entering the segment)."""
    g, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(start + g, y.shape[0], step):
        j = (t - start) // seg
        y[t] += math.pow(a, t - (start + j * seg) + 1) * carries[j]


@cuda.jit
def _scan_serial(u, a, start, y0, y):
    if cuda.grid(1) == 0:
        acc = y0
        for t in range(start, u.shape[0]):
            acc = a * acc + u[t]
            y[t] = acc


def linear_scan(u, a: float, y0: float, start: int = 0):
    """y_t = a * y_{t-1} + u_t for t >= start, y_{start-1} = y0, in parallel.

    Segments run side by side from zero; the values entering each segment
    obey the same recurrence with coefficient a**S over the segment ends, so
    they are found by the same routine on an array S times shorter.
    """
    n = u.shape[0]
    y = cuda.device_array(n, np.float64)
    m = n - start
    if m <= 0:
        return y
    if m <= 4 * SCAN_SEGMENT:
        _scan_serial[1, 1](u, a, start, y0, y)
        return y
    nseg = (m + SCAN_SEGMENT - 1) // SCAN_SEGMENT
    ends = cuda.device_array(nseg, np.float64)
    tiles = (m + SCAN_TILE - 1) // SCAN_TILE
    _scan_local[min(tiles, 65_535 * 16), THREADS](u, a, start, y, ends)
    # carries[j] = y just before segment j: carries[0] = y0, then the scan.
    inner = linear_scan(ends[: nseg - 1], a ** SCAN_SEGMENT, y0) if nseg > 1 else None
    carries = cuda.device_array(nseg, np.float64)
    carries[0:1].copy_to_device(np.array([y0]))
    if inner is not None:
        carries[1:].copy_to_device(inner)
    _scan_fixup[_blocks(m), THREADS](y, a, start, SCAN_SEGMENT, carries)
    return y


@cuda.jit
def _cov_terms(x, mean, start, mean0, a, inv, u):
    g, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(start + g, x.shape[0], step):
        prev = mean0 if t == start else mean[t - 1]
        d_old = prev - mean[t]
        d_new = x[t] - mean[t]
        u[t] = a * (d_old * d_old) + inv * (d_new * d_new)


@cuda.jit
def _scale_inv(x, start, inv, u):
    g, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(start + g, x.shape[0], step):
        u[t] = inv * x[t]


@cuda.jit
def _sigma_out(cov, start, factor, out):
    g, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(start + g, cov.shape[0], step):
        out[t] = core.sigma_from_cov(factor, cov[t])


def _settle_on_host(buf, span):
    """The settling phase on the host, over as short a prefix as it needs.

    Its length depends on the span alone (until the weights reach their
    fixed point: ~2,000 bars at span 100) but its steps are sequential: on
    one GPU thread they took ~4 ms of an H200's time (sigma at 1e7 candles:
    11.2 -> 6.9 ms), on the host tens of microseconds plus two small copies."""
    n = buf.shape[0]
    size = min(n, SETTLE_PREFIX)
    while True:
        head = buf[:size].copy_to_host()
        state = np.empty(6)
        cpu.ewm_settle(head, span, state)
        # Stopped short of the prefix: settled.  Reached its end: the whole
        # series settles within it, or the prefix was too short.
        if int(state[0]) < size or size == n:
            break
        size = min(n, size * 4)
    done = int(state[0])
    buf[:done].copy_to_device(head[:done])
    return state


def ewm_sigma(close, span):
    """The ewm sigma: the settling phase on the host (it is sequential and
    short), then the steady phase as two linear scans (mean, covariance)."""
    buf = log_returns(close)
    n = buf.shape[0]
    if n == 0:
        return buf
    i, mean0, cov0, a, inv, factor = _settle_on_host(buf, span)
    i = int(i)
    if i >= n:
        return buf
    blocks = _blocks(n - i)
    u = cuda.device_array(n, np.float64)
    _scale_inv[blocks, THREADS](buf, i, inv, u)
    mean = linear_scan(u, a, mean0, i)
    _cov_terms[blocks, THREADS](buf, mean, i, mean0, a, inv, u)
    cov = linear_scan(u, a, cov0, i)
    _sigma_out[blocks, THREADS](cov, i, factor, buf)
    return buf


@cuda.jit
def _rolling_kernel(close, span, out):
    start, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(start, close.shape[0], step):
        out[t] = core.rolling_sigma_at(close, t, span)


def rolling_sigma(close, span):
    close = as_device(close)
    out = cuda.device_array(close.shape[0], np.float64)
    _rolling_kernel[_blocks(close.shape[0]), THREADS](close, span, out)
    return out


# --------------------------------------------------------------------------
# Triple barrier


@cuda.jit
def _block_extremes(x, shift, is_max, out):
    g, step = cuda.grid(1), cuda.gridsize(1)
    w = 1 << shift
    for k in range(g, out.shape[0], step):
        lo = k * w
        hi = min(lo + w, x.shape[0])
        best = x[lo]
        for i in range(lo + 1, hi):
            v = x[i]
            if (v > best) if is_max else (v < best):
                best = v
        out[k] = best


def _extremes(x, shift, is_max):
    nk = max(1, (x.shape[0] + (1 << shift) - 1) >> shift)
    out = cuda.device_array(nk, np.float64)
    _block_extremes[_blocks(nk), THREADS](x, shift, is_max, out)
    return out


@cuda.jit
def _tb_kernel(open_, high, low, close, sigma, side, sided, horizon, pt, sl, tie_label, vertical,
               min_ret, direct, hi1, lo1, hi2, lo2, label, barrier, exit_bars, exit_ret, flags):
    n = close.shape[0]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(start, n, step):
        sd, upper, lower, last, near = core.tb_row_start(t, n, close, sigma, side, sided, horizon, direct,
                                                         pt, sl, label, barrier, exit_bars, exit_ret, flags)
        if sd == 0:
            continue
        j = core.first_touch_scan(t + 1, near, high, low, upper, lower)
        if j > near and near < last:
            j = core.first_touch_blocks(near + 1, last, high, low, upper, lower, hi1, lo1, hi2, lo2)
        core.tb_write_outcome(t, j, last, n, horizon, open_, high, low, close, upper, lower,
                              tie_label, vertical, min_ret, sd, label, barrier, exit_bars, exit_ret,
                              flags)


def _block_tables(high, low):
    return (_extremes(high, core.L1_SHIFT, True), _extremes(low, core.L1_SHIFT, False),
            _extremes(high, core.L2_SHIFT, True), _extremes(low, core.L2_SHIFT, False))


def triple_barrier(open_, high, low, close, sigma, horizon, pt, sl, tie_label, vertical, min_ret,
                   side=None):
    open_, high, low, close, sigma = (as_device(a) for a in (open_, high, low, close, sigma))
    side_arr = cuda.device_array(1, np.int8) if side is None else as_device(side)
    n = close.shape[0]
    label = cuda.device_array(n, np.int8)
    barrier = cuda.device_array(n, np.int8)
    exit_bars = cuda.device_array(n, np.int32)
    exit_ret = cuda.device_array(n, np.float64)
    flags = cuda.device_array(n, np.uint8)
    if n == 0:
        return label, barrier, exit_bars, exit_ret, flags
    hi1, lo1, hi2, lo2 = _block_tables(high, low)
    _tb_kernel[_blocks(n), THREADS](open_, high, low, close, sigma, side_arr, side is not None,
                                    horizon, pt, sl, tie_label, vertical, min_ret,
                                    min(horizon, cpu.DIRECT_SCAN_BARS),
                                    hi1, lo1, hi2, lo2, label, barrier, exit_bars, exit_ret, flags)
    return label, barrier, exit_bars, exit_ret, flags


@cuda.jit
def _meta_kernel(side, exit_ret, meta):
    g, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(g, exit_ret.shape[0], step):
        core.meta_at(t, side, exit_ret, meta)


def tb_meta(side, exit_ret):
    side, exit_ret = as_device(side), as_device(exit_ret)
    n = exit_ret.shape[0]
    meta = cuda.device_array(n, np.int8)
    if n:
        _meta_kernel[_blocks(n), THREADS](side, exit_ret, meta)
    return meta


# One thread a row keeps the row's levels and their first touches in local
# memory, sized for the most levels a grid can have.
GRID_LEVELS = MAX_COMBINATIONS


@cuda.jit
def _grid_kernel(open_, high, low, close, sigma, pts, sls, horizons, up_ord, lo_ord, tie_label,
                 vertical, min_ret, direct, no_table, hi1, lo1, hi2, lo2, label, exit_bars, exit_ret,
                 flags):
    up_lv_buf = cuda.local.array(GRID_LEVELS, np.float64)
    lo_lv_buf = cuda.local.array(GRID_LEVELS, np.float64)
    up_first_buf = cuda.local.array(GRID_LEVELS, np.int64)
    lo_first_buf = cuda.local.array(GRID_LEVELS, np.int64)
    v_lab_buf = cuda.local.array(GRID_LEVELS, np.int8)
    v_ret_buf = cuda.local.array(GRID_LEVELS, np.float64)
    v_bars_buf = cuda.local.array(GRID_LEVELS, np.int32)
    v_flag_buf = cuda.local.array(GRID_LEVELS, np.uint8)
    nh = horizons.shape[0]
    n = close.shape[0]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(start, n, step):
        core.grid_rows(t, t + 1, n, open_, high, low, close, sigma, pts, sls, horizons, up_ord,
                       lo_ord, up_lv_buf[:pts.shape[0]], lo_lv_buf[:sls.shape[0]],
                       up_first_buf[:pts.shape[0]], lo_first_buf[:sls.shape[0]], v_lab_buf[:nh],
                       v_ret_buf[:nh], v_bars_buf[:nh], v_flag_buf[:nh], tie_label, vertical,
                       min_ret, core.SEARCH_BLOCKS, direct, no_table, no_table, 0, 0, hi1, lo1,
                       hi2, lo2, label, exit_bars, exit_ret, flags)


def barrier_grid(open_, high, low, close, sigma, pts, sls, horizons, tie_label, vertical, min_ret):
    open_, high, low, close, sigma = (as_device(a) for a in (open_, high, low, close, sigma))
    pts, sls, horizons = (np.ascontiguousarray(a) for a in (pts, sls, horizons))
    n = close.shape[0]
    g = pts.shape[0] * sls.shape[0] * horizons.shape[0]
    label = cuda.device_array((n, g), np.int8)
    exit_bars = cuda.device_array((n, g), np.int32)
    exit_ret = cuda.device_array((n, g), np.float64)
    flags = cuda.device_array((n, g), np.uint8)
    if n == 0:
        return label, exit_bars, exit_ret, flags
    up_ord = np.argsort(pts, kind="stable").astype(np.int64)
    lo_ord = np.argsort(sls, kind="stable").astype(np.int64)
    hmax = int(horizons.max())
    _grid_kernel[_blocks(n), THREADS](open_, high, low, close, sigma, *(cuda.to_device(a) for a in (
        pts, sls, horizons, up_ord, lo_ord)), tie_label, vertical, min_ret,
        min(hmax, cpu.DIRECT_SCAN_BARS), cuda.device_array((1, 1), np.float64),
        *_block_tables(high, low),
        *(a.reshape(n * g) for a in (label, exit_bars, exit_ret, flags)))
    return label, exit_bars, exit_ret, flags


# --------------------------------------------------------------------------
# Forward returns and excursions


@cuda.jit
def _vsr_kernel(close, sigma, horizons, out):
    n = close.shape[0]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(start, n, step):
        for k in range(horizons.shape[0]):
            out[k, t] = core.vsr_at(close, sigma, t, horizons[k])


def vol_scaled_return(close, sigma, horizons):
    close, sigma = as_device(close), as_device(sigma)
    h = as_device(np.asarray(horizons, dtype=np.int64))
    out = cuda.device_array((h.shape[0], close.shape[0]), np.float64)
    _vsr_kernel[_blocks(close.shape[0]), THREADS](close, sigma, h, out)
    return out


@cuda.jit
def _runs_kernel(high, low, start, stop, width, hs_v, hs_i, hp_v, hp_i, ls_v, ls_i, lp_v, lp_i):
    g, step = cuda.grid(1), cuda.gridsize(1)
    nruns = (stop - start + width - 1) // width
    for r in range(g, nruns, step):
        r0 = start + r * width
        r1 = min(r0 + width, stop)
        core.run_extremes(high, r0, r1, width, start, hs_v, hs_i, hp_v, hp_i, True)
        core.run_extremes(low, r0, r1, width, start, ls_v, ls_i, lp_v, lp_i, False)


@cuda.jit
def _mfe_kernel(close, horizon, complete, start, hs_v, hs_i, hp_v, hp_i, ls_v, ls_i, lp_v, lp_i,
                mfe, mae, mfe_bars, mae_bars):
    g, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(g, close.shape[0], step):
        if t >= complete:
            mfe[t] = math.nan
            mae[t] = math.nan
            mfe_bars[t] = 0
            mae_bars[t] = 0
            continue
        aligned = (t + 1 - start) % horizon == 0
        hv, hi = core.window_ext(t + 1, horizon, start, aligned, hs_v, hs_i, hp_v, hp_i, True)
        lv, li = core.window_ext(t + 1, horizon, start, aligned, ls_v, ls_i, lp_v, lp_i, False)
        c0 = close[t]
        mfe[t] = hv / c0 - 1.0
        mae[t] = lv / c0 - 1.0
        mfe_bars[t] = hi - t
        mae_bars[t] = li - t


@cuda.jit
def _mfe_tile_kernel(high, low, close, horizon, complete, mfe, mae, mfe_bars, mae_bars):
    """One block per tile of THREADS * MFE_ROWS rows: the tile's windows are
    read once, coalesced, into shared memory, and each thread finds the
    extremes of its MFE_ROWS consecutive rows' windows there.

    Those windows overlap in all but their ends: the common core is scanned
    once, the left ends are added going left and the right ends going right,
    so MFE_ROWS rows cost horizon + 2 * (MFE_ROWS - 1) steps instead of
    MFE_ROWS * horizon.  Ties go to the first bar, as in ``run_extremes``: a
    later part replaces an earlier one only when strictly better.  Results
    go back through shared memory too, so that stores are coalesced."""
    hs = cuda.shared.array(MFE_TILE, np.float64)
    ls = cuda.shared.array(MFE_TILE, np.float64)
    hb = cuda.shared.array(MFE_TILE_ROWS, np.int32)
    lb = cuda.shared.array(MFE_TILE_ROWS, np.int32)
    # Per row: the right ends' extremes, then (overwritten) the row's results.
    up = cuda.local.array(MFE_ROWS, np.float64)
    up_at = cuda.local.array(MFE_ROWS, np.int32)
    dn = cuda.local.array(MFE_ROWS, np.float64)
    dn_at = cuda.local.array(MFE_ROWS, np.int32)
    n = close.shape[0]
    tid = cuda.threadIdx.x
    span = MFE_TILE_ROWS - 1 + horizon  # shared slot p holds bar t0 + 1 + p
    s = tid * MFE_ROWS
    for tile in range(cuda.blockIdx.x, (n + MFE_TILE_ROWS - 1) // MFE_TILE_ROWS, cuda.gridDim.x):
        t0 = tile * MFE_TILE_ROWS
        for k in range(tid, span, THREADS):
            j = t0 + 1 + k
            hs[k] = high[j] if j < n else math.nan
            ls[k] = low[j] if j < n else math.nan
        cuda.syncthreads()
        if t0 + s < complete:  # one row with a window: every part read below lies in it
            # The core: bars in every row's window (slots s + R - 1 .. s + horizon - 1).
            first = s + MFE_ROWS - 1
            chv = hs[first]
            chi = first
            clv = ls[first]
            cli = first
            for p in range(first + 1, s + horizon):
                v = hs[p]
                if v > chv:
                    chv = v
                    chi = p
                w = ls[p]
                if w < clv:
                    clv = w
                    cli = p
            # Right ends: row i adds slots s + horizon .. s + horizon + i - 1.
            hv = -math.inf
            hi = -1
            lv = math.inf
            li = -1
            for i in range(MFE_ROWS):
                if i > 0:
                    p = s + horizon + i - 1
                    v = hs[p]
                    if v > hv:
                        hv = v
                        hi = p
                    w = ls[p]
                    if w < lv:
                        lv = w
                        li = p
                up[i] = hv
                up_at[i] = hi
                dn[i] = lv
                dn_at[i] = li
            # Left ends, going left: row i adds slots s + i .. s + R - 2.
            hv = -math.inf
            hi = -1
            lv = math.inf
            li = -1
            for i in range(MFE_ROWS - 1, -1, -1):
                if i < MFE_ROWS - 1:
                    p = s + i
                    v = hs[p]
                    if v >= hv:
                        hv = v
                        hi = p
                    w = ls[p]
                    if w <= lv:
                        lv = w
                        li = p
                t = t0 + s + i
                if t < complete:
                    bh, bhi = hv, hi
                    if chv > bh:
                        bh, bhi = chv, chi
                    if up[i] > bh:
                        bh, bhi = up[i], up_at[i]
                    bl, bli = lv, li
                    if clv < bl:
                        bl, bli = clv, cli
                    if dn[i] < bl:
                        bl, bli = dn[i], dn_at[i]
                    c0 = close[t]
                    up[i] = bh / c0 - 1.0
                    dn[i] = bl / c0 - 1.0
                    up_at[i] = bhi + 1 - s - i
                    dn_at[i] = bli + 1 - s - i
                else:
                    up[i] = math.nan
                    dn[i] = math.nan
                    up_at[i] = 0
                    dn_at[i] = 0
        else:
            for i in range(MFE_ROWS):
                up[i] = math.nan
                dn[i] = math.nan
                up_at[i] = 0
                dn_at[i] = 0
        cuda.syncthreads()  # every window read: the shared arrays take the results
        for i in range(MFE_ROWS):
            hs[s + i] = up[i]
            ls[s + i] = dn[i]
            hb[s + i] = up_at[i]
            lb[s + i] = dn_at[i]
        cuda.syncthreads()
        for k in range(tid, MFE_TILE_ROWS, THREADS):
            t = t0 + k
            if t < n:
                mfe[t] = hs[k]
                mae[t] = ls[k]
                mfe_bars[t] = hb[k]
                mae_bars[t] = lb[k]
        cuda.syncthreads()  # the next tile overwrites the shared arrays


def mfe_mae(high, low, close, horizon):
    high, low, close = as_device(high), as_device(low), as_device(close)
    n = close.shape[0]
    mfe = cuda.device_array(n, np.float64)
    mae = cuda.device_array(n, np.float64)
    mfe_bars = cuda.device_array(n, np.int32)
    mae_bars = cuda.device_array(n, np.int32)
    complete = max(0, n - horizon)
    if n and MFE_ROWS <= horizon <= MFE_DIRECT_MAX:
        # Up to a few hundred bars the scan from shared memory beats the runs,
        # which threads a horizon apart write and read back through device
        # memory, uncoalesced (H200, horizon 60, 1e8 rows: 53.7 ms with runs).
        tiles = (n + MFE_TILE_ROWS - 1) // MFE_TILE_ROWS
        _mfe_tile_kernel[min(tiles, 65_535 * 16), THREADS](high, low, close, horizon, complete,
                                                           mfe, mae, mfe_bars, mae_bars)
        return mfe, mae, mfe_bars, mae_bars
    start, stop = 1, complete + horizon  # windows [t+1, t+horizon] for t < complete
    size = max(1, stop - start)
    scratch = [cuda.device_array(size, np.float64 if k % 2 == 0 else np.int64) for k in range(8)]
    if complete > 0:
        nruns = (stop - start + horizon - 1) // horizon
        _runs_kernel[_blocks(nruns), THREADS](high, low, start, stop, horizon, *scratch)
    if n:
        _mfe_kernel[_blocks(n), THREADS](close, horizon, complete, start, *scratch,
                                         mfe, mae, mfe_bars, mae_bars)
    return mfe, mae, mfe_bars, mae_bars


# --------------------------------------------------------------------------
# Second set: finer-candle resolution, sample weights, fixed horizon, trend


@cuda.jit
def _tb_resolve_kernel(rows, exit_bars, f_start, f_end, f_open, f_high, f_low, close, sigma,
                       side, sided, pt, sl, label, barrier, exit_ret, flags, decided):
    g, step = cuda.grid(1), cuda.gridsize(1)
    for r in range(g, rows.shape[0], step):
        decided[r] = core.tb_resolve_at(r, rows, exit_bars, f_start, f_end, f_open, f_high, f_low,
                                        close, sigma, side, sided, pt, sl, label, barrier, exit_ret,
                                        flags)


def tb_resolve(rows, exit_bars, f_start, f_end, f_open, f_high, f_low, close, sigma, pt, sl,
               label, barrier, exit_ret, flags, side=None):
    m = rows.shape[0]
    decided = cuda.device_array(max(m, 1), np.int64)
    if m:
        args = [as_device(a) for a in (rows, exit_bars, f_start, f_end, f_open, f_high, f_low,
                                       close, sigma)]
        side_arr = cuda.device_array(1, np.int8) if side is None else as_device(side)
        _tb_resolve_kernel[_blocks(m), THREADS](*args, side_arr, side is not None, pt, sl, label,
                                                barrier, exit_ret, flags, decided)
    return int(decided.copy_to_host()[:m].sum())


@cuda.jit
def _concurrency_kernel(flags, exit_bars, horizon, conc):
    g, step = cuda.grid(1), cuda.gridsize(1)
    for j in range(g, conc.shape[0], step):
        conc[j] = core.concurrency_at(j, flags, exit_bars, horizon)


@cuda.jit
def _weights_kernel(horizon, flags, exit_bars, conc, close, uniq, attr):
    g, step = cuda.grid(1), cuda.gridsize(1)
    n = conc.shape[0]
    for i in range(g, n, step):
        core.weights_at(i, n, horizon, flags, exit_bars, conc, close, uniq, attr)


def sample_weights(close, flags, exit_bars, horizon):
    close, flags, exit_bars = as_device(close), as_device(flags), as_device(exit_bars)
    n = close.shape[0]
    conc = cuda.device_array(n, np.int64)
    uniq = cuda.device_array(n, np.float64)
    attr = cuda.device_array(n, np.float64)
    if n:
        _concurrency_kernel[_blocks(n), THREADS](flags, exit_bars, horizon, conc)
        _weights_kernel[_blocks(n), THREADS](horizon, flags, exit_bars, conc, close, uniq, attr)
    return uniq, attr


@cuda.jit
def _fixed_horizon_kernel(close, sigma, horizon, k, sqrt_h, label, ret):
    g, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(g, close.shape[0], step):
        core.fixed_horizon_at(close, sigma, t, horizon, k, sqrt_h, label, ret)


def fixed_horizon(close, sigma, horizon, k):
    close, sigma = as_device(close), as_device(sigma)
    n = close.shape[0]
    label = cuda.device_array(n, np.int8)
    ret = cuda.device_array(n, np.float64)
    if n:
        _fixed_horizon_kernel[_blocks(n), THREADS](close, sigma, horizon, k, math.sqrt(horizon),
                                                   label, ret)
    return label, ret


@cuda.jit
def _log_kernel(close, out):
    g, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(g, close.shape[0], step):
        out[t] = math.log(close[t])


@cuda.jit
def _trend_kernel(logc, w_min, w_max, consts, label, tvalue, window):
    g, step = cuda.grid(1), cuda.gridsize(1)
    for t in range(g, logc.shape[0], step):
        core.trend_scan_at(logc, t, w_min, w_max, consts, label, tvalue, window)


def trend_scanning(close, w_min, w_max):
    close = as_device(close)
    n = close.shape[0]
    logc = cuda.device_array(n, np.float64)
    label = cuda.device_array(n, np.int8)
    tvalue = cuda.device_array(n, np.float64)
    window = cuda.device_array(n, np.int32)
    if n:
        consts = np.zeros((w_max + 1, 4))
        core.trend_constants(w_max, consts)  # plain Python here: a few hundred values
        _log_kernel[_blocks(n), THREADS](close, logc)
        _trend_kernel[_blocks(n), THREADS](logc, w_min, w_max, cuda.to_device(consts), label,
                                           tvalue, window)
    return label, tvalue, window


# --------------------------------------------------------------------------
# Validity bitmaps: built on the host, where the Arrow table is assembled.


def bitmap_not_nan(x):
    return cpu.bitmap_not_nan(to_host(x))


def bitmap_flags_clear(flags, bits):
    return cpu.bitmap_flags_clear(to_host(flags), bits)


def bitmap_prefix(n, count):
    return cpu.bitmap_prefix(n, count)
