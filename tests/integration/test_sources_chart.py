"""The console's chart reads a source's series where its candles are: the
same window over a source and over the same candles ingested into the
built-in table draws the same bars, buckets and label rows; a derived
granularity is drawn from its aggregate."""

from __future__ import annotations

import pandas as pd
import pytest
from test_sources import MAPS, candles, foreign_table, ingest_like_source

from gpubackfill.errors import InvalidInput
from gpubackfill.serve.ui import chart


def _without_source(d: dict) -> dict:
    return {k: v for k, v in d.items() if k != "source"}


def test_a_source_series_charts_as_its_ingested_copy(service):
    service.init()
    t = candles()
    rel = foreign_table(service, t)
    service.sources.add("mkt", rel, MAPS + ["volume=v"], granularity="M1")
    ingest_like_source(service, t)
    own = service.start("EURUSD", "M1", chunk_size=3_000, workers=1, labels=["enhanced_triple_barrier"])
    src = service.start("EURUSD", "M1", chunk_size=3_000, workers=1, labels=["enhanced_triple_barrier"],
                        source="mkt")
    set_id = service.job(src).label_set
    assert service.job(own).label_set == set_id

    # A day: every bar, with its label rows and barrier levels.
    frm, to = "2024-01-03", "2024-01-03T23:59"
    a = chart.window(service, "EURUSD", "M1", set_id, frm, to, source="mkt")
    b = chart.window(service, "EURUSD", "M1", set_id, frm, to)
    assert a["source"] == "mkt" and b["source"] == ""
    assert a["bucket_ms"] == 0 and len(a["candles"]) == a["bars"] > 1_000
    assert a["labels"] and a["levels"]["rows"]
    assert _without_source(a) == _without_source(b)
    # The bars are the candles of the day, as the source holds them.
    ts = t.column("ts").to_numpy()
    assert a["from_ms"] == pd.Timestamp(frm, tz="UTC").value // 10**6
    day = t.filter((ts >= a["from_ms"]) & (ts < a["to_ms"]))
    assert [c[0] for c in a["candles"]] == day.column("ts").to_pylist()
    assert [c[2] for c in a["candles"]] == day.column("high").to_pylist()

    # The whole week: more bars than drawn, bucketed in ClickHouse the same way.
    a = chart.window(service, "EURUSD", "M1", None, None, None, source="mkt")
    b = chart.window(service, "EURUSD", "M1", None, None, None)
    assert a["bucket_ms"] > 0 and 0 < len(a["candles"]) <= chart.MAX_POINTS < a["bars"] == t.num_rows
    assert _without_source(a) == _without_source(b)


def test_a_derived_series_charts_its_bars(service):
    service.init()
    t = candles()
    service.sources.add("mkt", foreign_table(service, t), MAPS + ["volume=v"], granularity="M1")
    got = chart.window(service, "EURUSD", "H1", None, None, None, source="mkt")
    frame = t.to_pandas().assign(ts=lambda f: pd.to_datetime(f.ts, unit="ms", utc=True)).set_index("ts")
    h1 = frame.resample("1h").agg({"open": "first", "high": "max", "low": "min", "close": "last"}).dropna()
    assert got["bars"] == len(h1) and got["bucket_ms"] == 0
    assert [c[0] for c in got["candles"]] == [int(x.value // 10**6) for x in h1.index]
    assert [c[1:] for c in got["candles"]] == h1[["open", "high", "low", "close"]].values.tolist()


def test_a_chart_of_an_unknown_source_is_refused(service):
    service.init()
    with pytest.raises(InvalidInput, match="nope"):
        chart.window(service, "EURUSD", "M1", None, None, None, source="nope")
