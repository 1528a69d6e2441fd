"""What a label declares to the engine, through a real job (chDB, Redis):
a label registered here, that the engine has never heard of, asks for finer
candles and reports a counter; the job loads those candles, adds the
counter up over its chunks into the job's record and status, and says once
when the finer series is missing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from gpubackfill import labels as registry
from gpubackfill.candles.synthetic import generate
from gpubackfill.labels import Column, Counter, FinerCandles, LabelSpec, Param, Series
from gpubackfill.storage.clickhouse_store import SeriesKey

pytestmark = pytest.mark.integration

TOY = "toy_finer_count"
H1 = 3_600_000


def _extra_inputs(p: Mapping[str, Any]) -> tuple[FinerCandles, ...]:
    return (FinerCandles(p["finer"], "finer", "toy_finer stays 0"),) if p["finer"] else ()


def _compute(kernels: Any, s: Series, sigma, p: Mapping[str, Any]) -> dict[str, Column]:
    """Each bar: how many finer candles lie inside it (0 without them)."""
    ts = np.asarray(s.ts, dtype=np.int64)
    n = np.zeros(len(ts), dtype=np.int32)
    if s.finer is not None:
        finer = s.finer(ts, s.bar_ms) if callable(s.finer) else s.finer
        f = np.asarray(finer.ts, dtype=np.int64)
        n = (np.searchsorted(f, ts + s.bar_ms) - np.searchsorted(f, ts)).astype(np.int32)
    return {"toy_finer": (n, None)}


TOY_SPEC = LabelSpec(
    name=TOY, doc="finer candles per bar", compute=_compute,
    params=(Param("finer", "choice", "M1", "finer granularity", choices=("", "M1", "M5")),),
    outputs=lambda p: [("toy_finer", pa.int32())], halo=lambda p: (0, 0),
    extra_inputs=_extra_inputs,
    counters=(Counter("toy_full_bars", "toy_full_bars",
                      lambda t, p: int(np.count_nonzero(t.column("toy_finer").to_numpy() == 60))),),
)


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.REGISTRY, TOY, TOY_SPEC)


def test_a_label_the_engine_does_not_know_gets_its_finer_candles_and_its_counter(service, toy):
    start, end = "2024-01-02", "2024-01-06"
    h1 = generate("EURUSD", "H1", start, end)
    m1 = generate("EURUSD", "M1", start, end)
    m1_ts = m1.column("ts").to_numpy()
    # Some bars lose a minute or more: they are not full.
    m1 = m1.filter(pa.array((m1_ts // 60_000) % 97 != 0))
    service.ingest_table(SeriesKey("EURUSD", "H1"), h1)
    service.ingest_table(SeriesKey("EURUSD", "M1"), m1)
    m1_ts = m1.column("ts").to_numpy()
    bars = h1.column("ts").to_numpy()
    per_bar = np.searchsorted(m1_ts, bars + H1) - np.searchsorted(m1_ts, bars)
    full = int(np.count_nonzero(per_bar == 60))
    assert 0 < full < len(bars)

    job = service.create_job("EURUSD", "H1", start, end, labels=[TOY], chunk_size=10, workers=2)
    assert service.execute(job).status == "completed"
    assert service.job(job).model_dump()["chunks_total"] > 1
    stored = service.export("EURUSD", "H1", [TOY])
    assert stored.column("toy_finer").to_pylist() == per_bar.tolist()
    assert service.job(job).model_dump()["toy_full_bars"] == full
    record = service.state.job(job)
    assert record["toy_full_bars"] == full
    # The built-in labels' counters are in every job's record, as before.
    assert record["tb_resolved"] == record["tb_ambiguous"] == 0


def test_a_missing_finer_series_a_label_asks_for_is_said_once(service, toy, caplog):
    start, end = "2024-01-02", "2024-01-04"
    service.ingest_table(SeriesKey("GBPUSD", "H1"), generate("GBPUSD", "H1", start, end))
    params = {TOY: {"finer": "M5"}}
    job = service.create_job("GBPUSD", "H1", start, end, labels=[TOY], params=params,
                             chunk_size=10, workers=2)
    with caplog.at_level("WARNING", logger="gpubackfill"):
        assert service.execute(job).status == "completed"
    said = [r.getMessage() for r in caplog.records if "no M5 candles for GBPUSD" in r.getMessage()]
    assert said == ["no M5 candles for GBPUSD: toy_finer stays 0 (after ingesting them, a new run "
                    "recomputes the chunks they change)"]
    notes = [e for e in service.state.events(job) if e.get("event") == "finer"]
    assert len(notes) == 1 and notes[0]["note"] == said[0]
    assert set(service.export("GBPUSD", "H1", [TOY], params).column("toy_finer").to_pylist()) == {0}
    assert service.job(job).model_dump()["toy_full_bars"] == 0
