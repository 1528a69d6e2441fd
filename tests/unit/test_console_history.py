"""The job page's throughput and ETA over the job's life (serve/ui/history)."""

from __future__ import annotations

import pytest

from gpubackfill.jobs import eta
from gpubackfill.serve.ui import history

# (finished at ms, seconds, candles): ten chunks of 1,000 candles, 2 s each, one at a time.
SAMPLES = [(10_000 + 2_000 * k, 2.0, 1_000) for k in range(10)]


def test_the_last_eta_is_the_estimate_of_now():
    charts = history.charts(SAMPLES, remaining_now=5_000, workers=1, now_ms=None)
    assert charts["eta"].values[-1] == eta.estimate(SAMPLES, 5_000, 1).eta_s
    # When the first chunk finished, the other nine and what is left now remained.
    assert charts["eta"].values[0] == eta.estimate(SAMPLES[:1], 14_000, 1).eta_s


def test_throughput_is_candles_per_minute_of_each_slice():
    charts = history.charts(SAMPLES, remaining_now=0, workers=1, now_ms=None)
    tp = charts["throughput"]
    assert (charts["t0"], charts["t1"], charts["candles"]) == (8_000, 28_000, 10_000)
    minutes = (charts["t1"] - charts["t0"]) / 60_000 / len(tp.values)
    assert sum(r * minutes for r in tp.values) == pytest.approx(10_000)
    assert tp.values == pytest.approx([30_000.0] * 10)   # 1,000 candles every 2 s


def test_no_samples_no_charts():
    assert history.charts([], 10, 1, None) is None
