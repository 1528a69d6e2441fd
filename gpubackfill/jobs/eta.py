"""Time left for a job, with a confidence interval, from its recent chunks.

The estimate is built from two measured quantities:

- **seconds per candle** of one chunk, ``d / n``: an exponentially weighted
  mean and variance (half-life 20 chunks; outliers such as the first
  chunks, which compile kernels, clipped to 5 robust sigmas) over the chunks in the order
  they finished, so that the estimate follows a job whose speed changes
  (cache hits at the start, a busier machine later).  Small chunks that
  share one read and one insert (``shared_io.SharedIO``) are one sample, their
  task's: one by one, the first would carry the whole read and the others
  look nearly free, a spread the job's speed does not have;
- **effective concurrency**: busy chunk-seconds over the wall-clock span
  of the same recent chunks (from the start of the oldest to the end of the
  newest), between 1 and the job's worker count.  This measures how many
  chunks really run side by side, driver overheads and gaps included,
  instead of assuming that every worker is always busy.

``ETA = remaining candles x mean seconds per candle / concurrency`` (with
fewer chunks left than that concurrency, only they run side by side).  Its
uncertainty has two parts: the standard error of the weighted mean (over the
effective sample size of the weighting) scaled to all remaining candles, and
the chunk-to-chunk spread of the remaining chunks, which adds up like a sum
of independent draws (a last part-chunk is one draw of its own size).  The
90% interval uses Student's t over the effective sample size, so it is wide
after a few chunks.  ``confidence`` turns the interval's relative width
and the number of chunks seen into one score in [0, 1].

Pure functions: no Redis, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# (finished at, ms since the epoch; duration, s; candles in the chunk)
Sample = tuple[int, float, int]

HALF_LIFE_CHUNKS = 20.0
Z_90 = 1.645            # two-sided 90% interval of a normal
WINDOW = 50             # recent chunks used for the concurrency


@dataclass(frozen=True)
class Estimate:
    rate_per_s: float            # candles/s, all concurrent chunks together
    eta_s: float | None          # seconds left; None when nothing is known yet
    eta_low_s: float | None      # 90% interval
    eta_high_s: float | None
    confidence: float            # 0 (a guess) .. 1 (tight and well sampled)
    concurrency: float           # chunks measured running side by side
    samples: int


UNKNOWN = Estimate(0.0, None, None, None, 0.0, 0.0, 0)


def ewm_mean_var(values: Sequence[float], half_life: float = HALF_LIFE_CHUNKS) -> tuple[float, float, float]:
    """Exponentially weighted mean, (bias-corrected) variance, and the
    effective sample size (Kish: 1 / sum of squared normalised weights)."""
    n = len(values)
    decay = 0.5 ** (1.0 / half_life)
    w = [decay ** (n - 1 - i) for i in range(n)]
    total = sum(w)
    w = [x / total for x in w]
    mean = sum(wi * x for wi, x in zip(w, values))
    sq = sum(wi * wi for wi in w)
    n_eff = 1.0 / sq
    if n < 2:
        return mean, 0.0, n_eff
    var = sum(wi * (x - mean) ** 2 for wi, x in zip(w, values)) / (1.0 - sq)
    return mean, var, n_eff


def t_quantile(df: float, z: float = Z_90) -> float:
    """Student's t quantile from the normal one (Cornish-Fisher, two terms):
    few chunks seen, wider interval."""
    df = max(df, 1.0)
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def winsorize(values: list[float], k: float = 5.0) -> list[float]:
    """Clip outliers to the median +- k robust sigmas (1.4826 MAD) of the
    recent values: a job's first chunks compile kernels and open
    connections, and one 20x slower chunk would otherwise dominate the mean
    for dozens of chunks."""
    if len(values) < 4:
        return values
    recent = sorted(values[-WINDOW:])
    med = recent[len(recent) // 2]
    mad = sorted(abs(x - med) for x in recent)[len(recent) // 2]
    spread = max(k * 1.4826 * mad, 0.05 * med)
    return [min(max(x, med - spread), med + spread) for x in values]


def concurrency(samples: Sequence[Sample], workers: int) -> float:
    """Busy chunk-seconds over the wall span of the recent chunks, in [1, workers]."""
    recent = samples[-WINDOW:]
    busy = sum(d for _, d, _ in recent)
    first_start = min(t / 1000.0 - d for t, d, _ in recent)
    span = max(t for t, _, _ in recent) / 1000.0 - first_start
    if span <= 0:
        return float(max(1, workers))
    return min(float(max(1, workers)), max(1.0, busy / span))


def estimate(samples: Sequence[Sample], remaining: int, workers: int,
             half_life: float = HALF_LIFE_CHUNKS) -> Estimate:
    """The ETA of ``remaining`` candles from the chunks finished so far."""
    samples = [s for s in samples if s[2] > 0 and s[1] >= 0]
    if not samples:
        return UNKNOWN if remaining > 0 else Estimate(0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0)
    per_candle = winsorize([max(d, 1e-9) / n for _, d, n in samples])
    mean, var, n_eff = ewm_mean_var(per_candle, half_life)
    conc = concurrency(samples, workers)
    rate = conc / mean
    if remaining <= 0:
        return Estimate(rate, 0.0, 0.0, 0.0, 1.0, conc, len(samples))
    chunk = sum(n for _, _, n in samples[-WINDOW:]) / len(samples[-WINDOW:])
    # Fewer chunks left than run side by side: only they can.
    conc_left = min(conc, max(1.0, remaining / chunk))
    eta = remaining * mean / conc_left
    if len(samples) < 2:
        return Estimate(rate, eta, None, None, 0.0, conc, 1)
    sd_mean = remaining * math.sqrt(var / n_eff) / conc_left      # we may have the speed wrong
    # Chunks vary around it: remaining / chunk draws of one chunk's spread,
    # or, with less than a chunk left, one draw of what is left.
    sd_draws = math.sqrt(remaining * min(chunk, remaining) * var) / conc_left
    sd = math.hypot(sd_mean, sd_draws)
    q = t_quantile(n_eff - 1.0)
    low, high = max(0.0, eta - q * sd), eta + q * sd
    tightness = 1.0 - min(1.0, q * sd / eta) if eta > 0 else 1.0
    seen = len(samples) / (len(samples) + 3.0)
    return Estimate(rate, eta, low, high, round(tightness * seen, 4), conc, len(samples))


def rate_text(per_min: float) -> str:
    """A rate for people: ``12.3M``, ``850k``, ``420`` (a small job is not "0.0M")."""
    if per_min >= 1e6:
        return f"{per_min / 1e6:,.1f}M"
    if per_min >= 1e3:
        return f"{per_min / 1e3:,.0f}k"
    return f"{per_min:,.0f}"
