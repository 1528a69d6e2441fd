"""A job's throughput and ETA over its life, for the job page's charts.

Both come from the chunks' samples (finished at, seconds, candles) that the
ETA is computed from: throughput is the candles finished in each slice of
the job's life per minute; the ETA at a sample is ``eta.estimate`` replayed
on the samples up to it, with the candles not yet done then, so its last
point is the ETA the page shows.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...jobs import eta as eta_mod

SLICES = 60        # throughput bars over the job's life
POINTS = 80        # ETA points, at evenly spaced samples
# Enough samples for a replayed estimate: older ones weigh below 2**-20
# (half-life 20 chunks), and a poll stays cheap on a job of 100,000 chunks.
REPLAY = 400


@dataclass(frozen=True)
class Chart:
    """One chart: ``points`` in the SVG's own units (0..width, 0..height),
    ``values`` the plotted numbers, ``top`` the y axis' maximum."""
    points: str
    band: str            # the ETA's 90 % interval as a polygon ('' when unknown)
    values: list[float]
    top: float
    width: int = 480
    height: int = 120


def _y(value: float, top: float, height: int) -> float:
    return height - min(value / top, 1.0) * height if top > 0 else float(height)


def throughput(samples: list[eta_mod.Sample], t0: int, t1: int, width: int = 480, height: int = 120
               ) -> Chart:
    """Candles/min finished in each of ``SLICES`` slices of [t0, t1] (ms)."""
    span = max(t1 - t0, 1)
    n = min(SLICES, max(len(samples), 1))
    done = [0] * n
    for t, _, candles in samples:   # slices (a, b]: a chunk counts where it finished
        done[min(max(-(-(t - t0) * n // span) - 1, 0), n - 1)] += candles
    rates = [c / (span / n / 60_000) for c in done]
    top = max(rates) or 1.0
    xs = [(i + 0.5) * width / n for i in range(n)]
    points = " ".join(f"{x:.1f},{_y(r, top, height):.1f}" for x, r in zip(xs, rates))
    return Chart(points, "", rates, top, width, height)


def eta(samples: list[eta_mod.Sample], t0: int, t1: int, remaining_now: int, workers: int,
        width: int = 480, height: int = 120) -> Chart | None:
    """The ETA (s) as estimated when each sample came in, and its interval."""
    if not samples:
        return None
    span = max(t1 - t0, 1)
    after = [0] * (len(samples) + 1)   # candles finished after sample k
    for k in range(len(samples) - 1, -1, -1):
        after[k] = after[k + 1] + samples[k][2]
    picks = sorted({round(i * (len(samples) - 1) / max(POINTS - 1, 1)) for i in range(POINTS)})
    rows = []
    for k in picks:
        est = eta_mod.estimate(samples[max(0, k + 1 - REPLAY): k + 1], remaining_now + after[k + 1], workers)
        if est.eta_s is not None:
            rows.append((samples[k][0], est.eta_s, est.eta_low_s, est.eta_high_s))
    if not rows:
        return None
    top = max(max(e, h or 0.0) for _, e, _, h in rows) or 1.0
    x = [(t - t0) / span * width for t, _, _, _ in rows]
    points = " ".join(f"{xi:.1f},{_y(e, top, height):.1f}" for xi, (_, e, _, _) in zip(x, rows))
    banded = [(xi, lo, hi) for xi, (_, _, lo, hi) in zip(x, rows) if lo is not None and hi is not None]
    band = ""
    if len(banded) > 1:
        band = " ".join([f"{xi:.1f},{_y(hi, top, height):.1f}" for xi, _, hi in banded]
                        + [f"{xi:.1f},{_y(lo, top, height):.1f}" for xi, lo, _ in reversed(banded)])
    return Chart(points, band, [e for _, e, _, _ in rows], top, width, height)


def charts(samples: list[eta_mod.Sample], remaining_now: int, workers: int, now_ms: int | None
           ) -> dict[str, object] | None:
    """Both charts over the same span: from the first chunk's start to now
    (``now_ms``, a running job) or to the last chunk (a finished one)."""
    samples = sorted(s for s in samples if s[2] > 0)
    if not samples:
        return None
    t0 = min(int(t - d * 1000) for t, d, _ in samples)
    t1 = max(samples[-1][0], now_ms or 0)
    return {"t0": t0, "t1": t1, "seconds": (t1 - t0) / 1000, "samples": len(samples),
            "candles": sum(n for _, _, n in samples),
            "throughput": throughput(samples, t0, t1), "eta": eta(samples, t0, t1, remaining_now, workers)}
