"""The ETA with confidence (gpubackfill.jobs.eta): convergence and behaviour."""

from __future__ import annotations

import numpy as np
import pytest

from gpubackfill.jobs.eta import estimate


def simulate(n_chunks: int, candles: int, seconds: float, workers: int, jitter: float = 0.05,
             seed: int = 0, first_factor: float = 1.0) -> list[tuple[int, float, int]]:
    """Finishing times of chunks run by ``workers`` parallel workers, each
    chunk taking ``seconds`` (+- jitter): what the driver records."""
    rng = np.random.default_rng(seed)
    free = [0.0] * workers  # when each worker is next free
    out = []
    for i in range(n_chunks):
        w = int(np.argmin(free))
        d = seconds * (1 + rng.uniform(-jitter, jitter)) * (first_factor if i == 0 else 1.0)
        free[w] += d + 0.01  # a small driver gap between chunks
        out.append((free[w], d, candles))
    out.sort()
    return [(int(1_000_000 + t * 1000), d, n) for t, d, n in out]


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_eta_after_half_the_job_is_within_20_percent(workers):
    samples = simulate(200, 10_000, 0.4, workers, seed=workers)
    half = samples[:100]
    true_remaining = (samples[-1][0] - half[-1][0]) / 1000
    est = estimate(half, remaining=100 * 10_000, workers=workers)
    assert est.eta_s == pytest.approx(true_remaining, rel=0.2)
    assert est.eta_low_s <= true_remaining <= est.eta_high_s or \
        abs(est.eta_s - true_remaining) / true_remaining < 0.05
    assert est.concurrency == pytest.approx(workers, rel=0.1)
    assert est.confidence > 0.8


def test_a_slow_first_chunk_does_not_skew_the_estimate():
    # kernels compiled during the first chunk: it takes 20x longer
    samples = simulate(100, 10_000, 0.4, 2, first_factor=20)
    est = estimate(samples[:50], 50 * 10_000, 2)
    true_remaining = (samples[-1][0] - samples[49][0]) / 1000
    assert est.eta_s == pytest.approx(true_remaining, rel=0.2)


def test_confidence_grows_and_interval_narrows_with_more_chunks():
    samples = simulate(100, 10_000, 0.4, 2, jitter=0.3)
    early = estimate(samples[:3], 97 * 10_000, 2)
    late = estimate(samples[:60], 40 * 10_000, 2)
    assert early.confidence < late.confidence
    rel_early = (early.eta_high_s - early.eta_low_s) / early.eta_s
    rel_late = (late.eta_high_s - late.eta_low_s) / late.eta_s
    assert rel_late < rel_early


def test_the_estimate_follows_a_change_of_speed():
    fast = simulate(60, 10_000, 0.2, 1)
    slow = simulate(60, 10_000, 0.8, 1, seed=3)
    shift = fast[-1][0] + 1
    joined = fast + [(t - slow[0][0] + shift + 800, d, n) for t, d, n in slow]
    est = estimate(joined, 100 * 10_000, 1)
    # 100 chunks at ~0.81 s each remain: the old speed is forgotten.
    assert est.eta_s == pytest.approx(100 * 0.81, rel=0.2)


def test_nothing_known_and_nothing_left():
    none = estimate([], 1_000, 2)
    assert none.eta_s is None and none.confidence == 0.0
    done = estimate([(1000, 1.0, 100)], 0, 2)
    assert done.eta_s == 0.0 and done.confidence == 1.0
    one = estimate([(1000, 1.0, 100)], 1_000, 1)
    assert one.eta_s == pytest.approx(10.0) and one.eta_low_s is None and one.confidence == 0.0


def shared_io_tasks(n_tasks: int, chunks: int, candles: int, read_s: float, chunk_s: float,
                    insert_s: float, workers: int, seed: int = 0) -> list[tuple[int, float, int]]:
    """What the driver records for tasks of ``chunks`` small chunks that share
    one read and one insert (shared_io.SharedIO): one sample per task, its time
    and its candles, finishing when its insert is in."""
    rng = np.random.default_rng(seed)
    free = [0.0] * workers
    out = []
    for _ in range(n_tasks):
        w = int(np.argmin(free))
        d = (read_s + chunks * chunk_s + insert_s) * (1 + rng.uniform(-0.05, 0.05))
        free[w] += d + 0.001  # Dask's dispatch between tasks
        out.append((free[w], d, chunks * candles))
    out.sort()
    return [(int(1_000_000 + t * 1000), d, n) for t, d, n in out]


@pytest.mark.parametrize("workers", [1, 2, 4])
def test_a_steady_job_of_shared_io_tasks_gets_a_confident_eta(workers):
    # 100-candle chunks, 8 to a task: the read is 10x a chunk's compute.
    samples = shared_io_tasks(200, 8, 100, 0.05, 0.005, 0.01, workers, seed=workers)
    half = samples[:100]
    true_remaining = (samples[-1][0] - half[-1][0]) / 1000
    est = estimate(half, remaining=100 * 800, workers=workers)
    assert est.eta_s == pytest.approx(true_remaining, rel=0.1)
    assert est.concurrency == pytest.approx(workers, rel=0.1)
    assert est.confidence > 0.8


def test_less_than_a_chunk_left_is_one_draw_of_its_own_size():
    # The last part-chunk varies as much as a chunk of its size, not as a
    # whole chunk: a steady job stays confident to its end.
    samples = simulate(100, 10_000, 0.4, 2)
    est = estimate(samples, remaining=1_000, workers=2)
    assert est.eta_s == pytest.approx(0.04, rel=0.1)  # one worker runs it
    assert (est.eta_high_s - est.eta_low_s) / est.eta_s < 0.2
    assert est.confidence > 0.9
