"""Realistic synthetic candles for demos, tests and benchmarks.

``generate("EURUSD", "M1", "2024-01-01", "2024-02-01")`` returns a pyarrow
Table (ts int64 ms UTC, open, high, low, close, volume float64) that passes
``gpubackfill.candles.frames.validate``.  The model:

- **Price.** A random walk in log price whose per-bar volatility is
  ``annual_vol * sqrt(bar length / trading year) * sqrt(season) * regime``
  (a trading year is 260 days of 24 hours for FX and metals, 365 for crypto;
  a W1 bar of FX counts 5 trading days).
- **Volatility clustering.** ``regime = exp(x - var(x))`` with ``x`` the sum
  of two Ornstein-Uhlenbeck processes in log volatility (time constants of 4
  hours and 15 days, sd 0.35 each, sampled exactly at the bar spacing, so
  every granularity sees the same process in calendar time).
  ``E[regime^2] = 1``, so the long-run volatility is the instrument's annual
  figure.
- **Intraday seasonality** (bars shorter than a day): variance follows the
  trading sessions (Tokyo, London, New York for FX and metals; US hours,
  more mildly, for crypto), normalised to mean 1 over the day.  Volume rises
  with the session and with the volatility regime.
- **Sessions.** FX and metals trade from Sunday 22:00 to Friday 22:00 UTC: a
  bar starting inside the weekend is not emitted, and the first bar after the
  weekend opens with a gap from Friday's close (about six trading hours of
  volatility).  Crypto (``BTC*``, ``ETH*``) trades 24/7 with no gaps.
- **Bars.** ``open`` is the previous ``close`` except after a weekend and, in
  about 0.3% of bars, after a tiny gap.  ``high`` and ``low`` are draws of the
  maximum and minimum of a Brownian bridge from open to close with the bar's
  volatility (exact marginals).  Prices are rounded to the instrument's tick
  (5 decimals for FX, 3 for JPY pairs and silver, 2 for gold and crypto), and
  only then are ``high = max(high, open, close)`` and ``low = min(low, open,
  close)`` enforced, so the OHLC rules hold exactly on the rounded values.
- **Time.** Bars start at multiples of the granularity since the epoch, from
  the first such instant at or after ``start`` up to, not including, ``end``.

Known instruments carry plausible start prices and volatilities (see
``INSTRUMENTS``); any other name gets a price and volatility derived from a
hash of the name, so it is stable across runs and machines.

Results are deterministic: the random stream is seeded from the instrument
and granularity, mixed with ``seed`` when one is given (so ``generate_many``
with one seed still gives every instrument its own path).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime

import numba
import numpy as np
import pandas as pd
import pyarrow as pa

from ..common.granularity import (
    DAY_MS,
    GRANULARITIES,
    HOUR_MS,
    MINUTE_MS,
    WEEK_MS,
    parse_granularity,
    parse_instrument,
)
from ..errors import InvalidInput, shown

SCHEMA = pa.schema([
    ("ts", pa.int64()),
    ("open", pa.float64()),
    ("high", pa.float64()),
    ("low", pa.float64()),
    ("close", pa.float64()),
    ("volume", pa.float64()),
])

# Refuse requests that would not fit in memory (about 50 bytes per bar).
MAX_BARS = 300_000_000


@dataclass(frozen=True)
class InstrumentSpec:
    """How one instrument's synthetic candles look."""

    price: float            # start price
    annual_vol: float       # annualised volatility of log returns
    decimals: int           # tick = 10 ** -decimals
    volume_per_minute: float  # mean volume per trading minute
    volume_decimals: int    # 0: tick volume (whole numbers, at least 1)
    always_open: bool       # crypto: 24/7, no weekend
    sessions: str           # "fx" or "crypto" intraday seasonality


def _fx(price: float, vol: float, decimals: int = 5, vpm: float = 100.0) -> InstrumentSpec:
    return InstrumentSpec(price, vol, decimals, vpm, 0, False, "fx")


def _crypto(price: float, vol: float, vpm: float) -> InstrumentSpec:
    return InstrumentSpec(price, vol, 2, vpm, 3, True, "crypto")


# Keyed by the name without separators: EUR_USD, EUR/USD and eurusd are EURUSD.
INSTRUMENTS: dict[str, InstrumentSpec] = {
    "EURUSD": _fx(1.10, 0.07, vpm=120),
    "GBPUSD": _fx(1.27, 0.08, vpm=100),
    "USDJPY": _fx(150.0, 0.09, 3, vpm=110),
    "USDCHF": _fx(0.88, 0.07, vpm=60),
    "USDCAD": _fx(1.35, 0.06, vpm=60),
    "AUDUSD": _fx(0.66, 0.10, vpm=70),
    "NZDUSD": _fx(0.61, 0.10, vpm=40),
    "EURGBP": _fx(0.86, 0.06, vpm=50),
    "EURJPY": _fx(162.0, 0.09, 3, vpm=70),
    "GBPJPY": _fx(190.0, 0.11, 3, vpm=70),
    "XAUUSD": _fx(2000.0, 0.15, 2, vpm=150),
    "XAGUSD": _fx(23.0, 0.25, 3, vpm=80),
    "BTCUSD": _crypto(40_000.0, 0.60, vpm=15.0),
    "ETHUSD": _crypto(2_500.0, 0.75, vpm=120.0),
}

_FX_YEAR_MS = 260 * DAY_MS       # 52 weeks x 5 trading days
_CRYPTO_YEAR_MS = 365 * DAY_MS
_WEEKEND_GAP_MS = 6 * HOUR_MS    # weekend news, in trading-time equivalent
_TINY_GAP_P = 0.003              # share of bars opening off the previous close
_TINY_GAP_SD = 0.2               # in bar sigmas

# Log-volatility: two OU components (half-life-ish time constant, stationary sd).
_VOL_COMPONENTS = ((4 * HOUR_MS, 0.35), (15 * DAY_MS, 0.35))
_VOL_VAR = sum(sd * sd for _, sd in _VOL_COMPONENTS)

_VOLUME_NOISE = 0.35  # sd of log volume noise


def _key(instrument: str) -> str:
    return "".join(ch for ch in instrument if ch.isalnum())


def _hash_words(text: str) -> list[int]:
    digest = hashlib.sha256(text.encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "little") for i in range(0, 32, 4)]


def instrument_spec(instrument: str) -> InstrumentSpec:
    """The spec of a known instrument, or one derived from the name's hash."""
    key = _key(parse_instrument(instrument))
    if key in INSTRUMENTS:
        return INSTRUMENTS[key]
    u = [w / 2**32 for w in _hash_words("spec|" + key)]
    crypto = key.startswith(("BTC", "ETH"))
    if key.endswith("JPY"):
        price, decimals = 80.0 + 120.0 * u[0], 3
    else:
        price = 10.0 ** (-1.0 + 4.0 * u[0])  # 0.1 .. 1000
        price = float(f"{price:.4g}")
        decimals = int(min(6, max(2, 5 - math.floor(math.log10(price)))))
    price = round(price, decimals)
    if crypto:
        return InstrumentSpec(price, 0.5 + 0.4 * u[1], decimals, 50.0, 3, True, "crypto")
    return InstrumentSpec(price, 0.05 + 0.20 * u[1], decimals, 30.0 + 100.0 * u[2], 0, False, "fx")


# --------------------------------------------------------------------------
# time


def _to_ms(value: object, name: str) -> int:
    """datetime / date / ISO text / int epoch ms -> int ms UTC (naive = UTC)."""
    if isinstance(value, (bool, np.bool_)):
        raise InvalidInput(f"{name} must be a datetime or an ISO date/time, got {shown(value)}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if not isinstance(value, (str, datetime, date, pd.Timestamp, np.datetime64)):
        raise InvalidInput(f"{name} must be a datetime or an ISO date/time, got {shown(value)}")
    try:
        ts = pd.Timestamp(value)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{name} is not a date/time: {shown(value)} ({exc})") from None
    if ts is pd.NaT:
        raise InvalidInput(f"{name} is not a date/time: {shown(value)}")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int(ts.value // 1_000_000)


def _first_bar(start_ms: int, step: int) -> int:
    return -(-start_ms // step) * step


def _bar_count(first: int, end_ms: int, step: int) -> int:
    if end_ms <= first:
        return 0
    n = (end_ms - first + step - 1) // step
    if n > MAX_BARS:
        raise InvalidInput(f"that range holds {n:,} bars; at most {MAX_BARS:,} per call")
    return n


_MONDAY_MS = 4 * DAY_MS                     # 1970-01-05 was a Monday
_FX_CLOSE_MS = 4 * DAY_MS + 22 * HOUR_MS    # Friday 22:00, from Monday 00:00
_FX_OPEN_MS = 6 * DAY_MS + 22 * HOUR_MS     # Sunday 22:00


def fx_open_mask(ts: np.ndarray) -> np.ndarray:
    """True for bar starts outside the FX weekend (Friday 22:00 to Sunday 22:00 UTC)."""
    since_monday = (ts - _MONDAY_MS) % WEEK_MS
    return (since_monday < _FX_CLOSE_MS) | (since_monday >= _FX_OPEN_MS)


@numba.njit(cache=True, nogil=True)
def _session_bars(first, n_grid, step, phase0, open_by_phase):  # pragma: no cover - numba
    """Bars of the grid ``first + j * step`` whose phase in the week is open.

    Returns their ts, their phase (bar index since Monday 00:00 UTC) and a
    gap kind: 2 where the bar follows a closed stretch, else 0.
    """
    period = open_by_phase.shape[0]
    full, rest = divmod(n_grid, period)
    n = full * open_by_phase.sum()
    p = phase0
    for _ in range(rest):
        n += open_by_phase[p]
        p += 1
        if p == period:
            p = 0
    ts = np.empty(n, np.int64)
    phase = np.empty(n, np.int32)
    kind = np.zeros(n, np.int8)
    k = 0
    p = phase0
    skipped = False
    for j in range(n_grid):
        if open_by_phase[p]:
            ts[k] = first + j * step
            phase[k] = p
            if skipped and k > 0:
                kind[k] = 2
            skipped = False
            k += 1
        else:
            skipped = True
        p += 1
        if p == period:
            p = 0
    return ts, phase, kind


# --------------------------------------------------------------------------
# seasonality


def _bump(hours: np.ndarray, centre: float, width: float) -> np.ndarray:
    d = np.abs(hours - centre)
    d = np.minimum(d, 24.0 - d)
    return np.exp(-0.5 * (d / width) ** 2)


def _season_of_day(sessions: str) -> np.ndarray:
    """Variance multiplier per second of the UTC day, mean 1."""
    h = (np.arange(86_400) + 0.5) / 3600.0
    if sessions == "crypto":
        f = 0.75 + 0.45 * _bump(h, 15.0, 3.5) + 0.15 * _bump(h, 2.0, 2.5)
    else:
        f = (0.28 + 0.45 * _bump(h, 1.5, 1.8)    # Tokyo
             + 1.00 * _bump(h, 8.0, 1.6)         # London open
             + 1.35 * _bump(h, 13.75, 1.7)       # New York / London overlap
             - 0.12 * _bump(h, 21.5, 0.6))       # rollover lull
    return f / f.mean()


def _season_by_phase(step: int, sessions: str) -> np.ndarray:
    """Variance multiplier of each bar of the week (phase 0 starts Monday 00:00 UTC)."""
    period = WEEK_MS // step
    if step >= DAY_MS:
        return np.ones(period)
    per_day = _season_of_day(sessions)
    slots = per_day.reshape(DAY_MS // step, step // 1000).mean(axis=1)
    return np.tile(slots, period // len(slots))


# --------------------------------------------------------------------------
# kernels


@numba.njit(cache=True, nogil=True)
def _log_path(eps_a, eps_b, z, gap_kind, gap_z, phase, season_sd, phi_a, phi_b, sd_a, sd_b,
              x0_a, x0_b, vol_var, base_sigma, tiny_sd, weekend_sd, log_p0):  # pragma: no cover
    """The sequential part: volatility regime, bar sigma, log open and log close.

    Log volatility is the sum of two exact-discretised OU processes (driven by
    eps_a, eps_b); the bar's log return is sigma * z; a bar of gap kind 1
    (tiny) or 2 (after the weekend) opens away from the previous close.
    """
    n = z.shape[0]
    regime = np.empty(n)
    sigma = np.empty(n)
    log_open = np.empty(n)
    log_close = np.empty(n)
    ka = sd_a * math.sqrt(1.0 - phi_a * phi_a)
    kb = sd_b * math.sqrt(1.0 - phi_b * phi_b)
    a = x0_a
    b = x0_b
    lc = log_p0
    for i in range(n):
        a = phi_a * a + ka * eps_a[i]
        b = phi_b * b + kb * eps_b[i]
        r = math.exp(a + b - vol_var)  # E[r^2] = exp(2 var - 2 var) = 1
        s = base_sigma * season_sd[phase[i]] * r
        k = gap_kind[i]
        lo = lc
        if k == 1:
            lo = lc + tiny_sd * s * gap_z[i]
        elif k == 2:
            lo = lc + weekend_sd * gap_z[i]
        lc = lo + s * z[i]
        regime[i] = r
        sigma[i] = s
        log_open[i] = lo
        log_close[i] = lc
    return regime, sigma, log_open, log_close


@numba.njit(cache=True, nogil=True)
def _bars(log_open, log_close, sigma, gap_kind, e_up, e_down, scale, tick):  # pragma: no cover
    """Prices on the tick grid; high/low from a Brownian bridge open -> close.

    For a bridge with variance s^2 and end point d, max M and min m have
    P(M >= x) = exp(-2x(x-d)/s^2); with E ~ Exp(1), M = (d + sqrt(d^2 + 2s^2 E))/2
    (and m alike, with its own E) are exact draws of each.  Rounding is
    rint(p * 10^decimals) / 10^decimals, numpy's ``round``.
    """
    n = log_close.shape[0]
    open_ = np.empty(n)
    high = np.empty(n)
    low = np.empty(n)
    close = np.empty(n)
    for i in range(n):
        close[i] = max(np.rint(math.exp(log_close[i]) * scale) / scale, tick)
    for i in range(n):
        lo = log_open[i]
        if i > 0 and gap_kind[i] == 0:
            o = close[i - 1]  # log_open[i] is log_close[i - 1] exactly
        else:
            o = max(np.rint(math.exp(lo) * scale) / scale, tick)
        c = close[i]
        d = log_close[i] - lo
        v2 = 2.0 * sigma[i] * sigma[i]
        up = 0.5 * (d + math.sqrt(d * d + v2 * e_up[i]))
        down = 0.5 * (d - math.sqrt(d * d + v2 * e_down[i]))
        h = max(np.rint(math.exp(lo + up) * scale) / scale, tick)
        w = max(np.rint(math.exp(lo + down) * scale) / scale, tick)
        open_[i] = o
        high[i] = max(h, max(o, c))
        low[i] = min(w, min(o, c))
    return open_, high, low, close


@numba.njit(cache=True, nogil=True)
def _volume(noise, noise_sd, phase, season_vol, regime, per_bar, scale,
            at_least):  # pragma: no cover - numba
    n = noise.shape[0]
    out = np.empty(n)
    shift = 0.5 * noise_sd * noise_sd
    for i in range(n):
        v = per_bar * season_vol[phase[i]] * regime[i] * math.exp(noise_sd * noise[i] - shift)
        out[i] = max(np.rint(v * scale) / scale, at_least)
    return out


# --------------------------------------------------------------------------
# generation


def _rng(instrument: str, granularity: str, seed: int | None) -> np.random.Generator:
    words = _hash_words(f"{_key(instrument)}|{granularity}")
    if seed is None:
        return np.random.default_rng(np.random.SeedSequence(words))
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InvalidInput(f"seed must be a non-negative integer, got {shown(seed)}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), *words]))


def generate(
    instrument: str,
    granularity: str,
    start: datetime | date | str | int,
    end: datetime | date | str | int,
    seed: int | None = None,
) -> pa.Table:
    """Synthetic candles for ``instrument`` at ``granularity`` in ``[start, end)``.

    ``start`` and ``end`` are datetimes (naive ones are UTC), ISO text or
    epoch milliseconds.  Returns ts (int64 ms UTC), open, high, low, close,
    volume (float64); deterministic for a given (instrument, granularity,
    start, end, seed).
    """
    name = parse_instrument(instrument)
    gran = parse_granularity(granularity)
    step = GRANULARITIES[gran]
    start_ms, end_ms = _to_ms(start, "start"), _to_ms(end, "end")
    if end_ms < start_ms:
        raise InvalidInput(f"end ({shown(end)}) is before start ({shown(start)})")
    if seed is not None:
        _rng(name, gran, seed)  # validate the seed even when there is nothing to draw
    spec = instrument_spec(name)

    first = _first_bar(start_ms, step)
    n_grid = _bar_count(first, end_ms, step)
    period = WEEK_MS // step
    phase_time = np.arange(period, dtype=np.int64) * step
    if spec.always_open:
        open_by_phase = np.ones(period, np.uint8)
    else:
        open_by_phase = ((phase_time < _FX_CLOSE_MS) | (phase_time >= _FX_OPEN_MS)).astype(np.uint8)
    phase0 = ((first - _MONDAY_MS) % WEEK_MS) // step
    ts, phase, gap_kind = _session_bars(first, n_grid, step, phase0, open_by_phase)
    n = len(ts)
    if n == 0:
        return SCHEMA.empty_table()

    rng = _rng(name, gran, seed)
    year_ms = _CRYPTO_YEAR_MS if spec.always_open else _FX_YEAR_MS
    trading_ms = step if (spec.always_open or step < WEEK_MS) else 5 * DAY_MS
    base_sigma = spec.annual_vol * math.sqrt(trading_ms / year_ms)
    weekend_sd = spec.annual_vol * math.sqrt(_WEEKEND_GAP_MS / year_ms)
    season = _season_by_phase(step, spec.sessions)

    # Every draw has a fixed size and order, so a seed fixes the whole table.
    f32 = np.float32
    x0 = rng.standard_normal(2)
    eps_a = rng.standard_normal(n, dtype=f32)
    eps_b = rng.standard_normal(n, dtype=f32)
    z = rng.standard_normal(n, dtype=f32)
    tiny = rng.random(n, dtype=f32) < _TINY_GAP_P
    tiny[0] = False
    gap_kind[tiny & (gap_kind == 0)] = 1
    gapped = np.flatnonzero(gap_kind)
    gap_z = np.zeros(n, dtype=f32)
    gap_z[gapped] = rng.standard_normal(len(gapped), dtype=f32)
    e_up = rng.standard_exponential(n, dtype=f32)
    e_down = rng.standard_exponential(n, dtype=f32)
    noise = rng.standard_normal(n, dtype=f32)

    (tau_a, sd_a), (tau_b, sd_b) = _VOL_COMPONENTS
    regime, sigma, log_open, log_close = _log_path(
        eps_a, eps_b, z, gap_kind, gap_z, phase, np.sqrt(season),
        math.exp(-step / tau_a), math.exp(-step / tau_b), sd_a, sd_b,
        sd_a * float(x0[0]), sd_b * float(x0[1]), _VOL_VAR,
        base_sigma, _TINY_GAP_SD, weekend_sd, math.log(spec.price))
    del eps_a, eps_b, z, gap_z
    scale = 10.0 ** spec.decimals
    open_, high, low, close = _bars(log_open, log_close, sigma, gap_kind, e_up, e_down,
                                    scale, 1.0 / scale)
    del log_open, log_close, sigma, e_up, e_down
    volume = _volume(noise, _VOLUME_NOISE, phase, season ** 0.8, regime,
                     spec.volume_per_minute * trading_ms / MINUTE_MS,
                     10.0 ** spec.volume_decimals, 1.0 if spec.volume_decimals == 0 else 0.0)

    return pa.Table.from_arrays(
        [pa.array(ts), pa.array(open_), pa.array(high), pa.array(low), pa.array(close),
         pa.array(volume)],
        schema=SCHEMA,
    )


def generate_many(
    instruments: Iterable[str],
    granularity: str,
    start: datetime | date | str | int,
    end: datetime | date | str | int,
    seed: int | None = None,
) -> dict[str, pa.Table]:
    """``generate`` for each instrument; keys are the canonical (upper-case) names."""
    if isinstance(instruments, str):
        instruments = [instruments]
    out: dict[str, pa.Table] = {}
    for instrument in instruments:
        name = parse_instrument(instrument)
        if name not in out:
            out[name] = generate(name, granularity, start, end, seed)
    return out
