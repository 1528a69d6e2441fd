"""``update`` over a source, which has no ingest log: a chunk is stale when
ClickHouse's print of its input (its rows and halo) changed.  After an
append, a corrected candle and a deleted one, exactly the chunks the halo
rule reaches are recomputed (the expectation is computed here from the
candles' positions), the labels equal a fresh backfill, and a second
``update`` finds nothing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_cli import cli  # noqa: F401 - the in-process CLI fixture
from test_sources import MAPS, candles, foreign_table, insert_foreign, rows_read

from gpubackfill.labels import DEFAULT_LABELS, halo, resolve
from gpubackfill.sources import fingerprint
from gpubackfill.storage.clickhouse_store import SeriesKey

CHUNK = 800
KEY = SeriesKey("EURUSD", "M1", "mkt")


def records(service) -> dict[tuple[int, int], int]:
    """(start, end) -> computed at, of the source series' manifest."""
    return {(a, b): at for i, g, s, a, b, rows, inc, at in service.store.manifest("mkt")}


def halo_reaches(ts: np.ndarray, recs, back: int, ahead: int, touched) -> set[tuple[int, int]]:
    """The chunks whose input rows [first own - back, last own + ahead]
    hold a touched row position (``touched(lo, hi)``, positions in ``ts``)."""
    out = set()
    for a, b in recs:
        i0, i1 = int(np.searchsorted(ts, a)), int(np.searchsorted(ts, b))
        if touched(max(i0 - back, 0), i1 + ahead):
            out.add((a, b))
    return out


def change(service, rel: str, how: str, ts: np.ndarray, m: int) -> None:
    """Correct or delete the candle at position ``m``, as the table's owner would."""
    at = int(ts[m]) // 1000
    if how == "correct":
        service.store.command(f"ALTER TABLE {rel} UPDATE c = toFloat32((h + l) / 2) WHERE "
                              f"toUnixTimestamp(time) = {at} SETTINGS mutations_sync = 2")
    else:
        service.store.command(f"ALTER TABLE {rel} DELETE WHERE toUnixTimestamp(time) = {at} "
                              f"SETTINGS mutations_sync = 2")


@pytest.mark.parametrize("how", ["append", "correct", "delete"])
def test_update_recomputes_exactly_the_chunks_the_halo_reaches(service, how):
    service.init()
    full = candles(end="2024-01-06")
    n = full.num_rows - 700 if how == "append" else full.num_rows
    rel = foreign_table(service, full.slice(0, n))
    service.sources.add("mkt", rel, MAPS + ["volume=v"], granularity="M1")
    service.start("EURUSD", "M1", chunk_size=CHUNK, workers=2, source="mkt")
    before = records(service)
    assert len(before) >= 5
    back, ahead = halo(resolve(list(DEFAULT_LABELS), None))
    ts = full.column("ts").to_numpy()[:n]
    if how == "append":
        insert_foreign(service, rel, full.slice(n))
        expected = halo_reaches(ts, before, back, ahead, lambda lo, hi: hi > n)
    else:
        # Just inside the fourth chunk: in its own rows, the third's look-ahead
        # and the back halo of the chunks after it.
        starts = sorted(a for a, _ in before)
        m = int(np.searchsorted(ts, starts[3])) + 3
        change(service, rel, how, ts, m)
        expected = halo_reaches(ts, before, back, ahead, lambda lo, hi: lo <= m < hi)
    # A meaningful case: some chunks stale (several where a halo overlaps), some not.
    assert (1 if how == "append" else 2) <= len(expected) < len(before)

    plans = service.plan_update(source="mkt", chunk_size=CHUNK, workers=2)
    assert [p["stale_chunks"] for p in plans] == [len(expected)]
    assert (plans[0]["new_chunks"] > 0) == (how == "append")
    for p in plans:
        service.execute(p["job_id"])
    after = records(service)
    recomputed = {r for r, at in before.items() if after[r] != at}
    assert recomputed == expected
    assert set(after) >= set(before)

    # The same labels as a fresh backfill over the source as it is now.
    service.sources.add("fresh", rel, MAPS + ["volume=v"], granularity="M1")
    fresh = service.start("EURUSD", "M1", chunk_size=CHUNK, workers=2, source="fresh")
    set_id = service.job(fresh).model_dump()["label_set"]
    mine = service.store.read_labels(KEY, set_id)
    again = service.store.read_labels(SeriesKey("EURUSD", "M1", "fresh"), set_id)
    assert mine.num_rows == again.num_rows == service.store.series_summary(KEY)[0]
    assert mine.equals(again)
    assert service.store.label_counts(KEY, set_id)[0] == mine.num_rows  # no duplicates

    assert service.plan_update(source="mkt", chunk_size=CHUNK, workers=2) == []


def test_a_window_print_in_clickhouse_equals_the_one_made_in_python(service):
    """The row hash is written twice (numpy at chunk time, SQL in update): they agree."""
    service.init()
    t = candles(end="2024-01-03")
    rel = foreign_table(service, t)
    service.sources.add("mkt", rel, MAPS + ["volume=v"], granularity="M1")
    loaded, first, own = service.store.load(KEY, int(t.column("ts")[100].as_py()),
                                            int(t.column("ts")[900].as_py()), 50, 30)
    ts = loaded.column("ts").to_numpy()
    py = fingerprint.chunk_print(loaded, first, own, 50, 30, int(ts[first]), int(ts[first + own]))
    window, stamp, _ = fingerprint.parse(py)
    assert (first, own, loaded.num_rows) == (50, 800, 880)
    assert service.store.window_prints(KEY, [window, (window[0], window[1] + 60_000)]) == [
        stamp, fingerprint.stamp(881, fingerprint.total(fingerprint.row_hashes(
            ts_next := service.store.load(KEY, window[0], window[1] + 60_000, 0, 0)[0].column("ts").to_numpy(),
            {c: service.store.load(KEY, window[0], window[1] + 60_000, 0, 0)[0].column(c).to_numpy()
             for c in fingerprint.COLUMNS})))]
    assert len(ts_next) == 881
    assert pa.types.is_int64(loaded.column("ts").type)


def test_sets_series_export_and_update_take_the_source(cli, service, tmp_path):  # noqa: F811
    """The same instrument from the built-in table and from a source (other
    candles): each command shows, exports or updates the one it is given."""
    import json

    import pyarrow.parquet as pq

    service.init()
    mine = candles(end="2024-01-03")
    rel = foreign_table(service, mine)
    service.sources.add("mkt", rel, MAPS, granularity="M1")
    service.ingest_table(SeriesKey("EURUSD", "M1"), candles(start="2024-01-04", end="2024-01-06"))
    assert cli("start", "--instrument", "EURUSD", "--granularity", "M1", "--source", "mkt",
               "--chunk-size", "1000").exit_code == 0
    assert cli("start", "--instrument", "EURUSD", "--granularity", "M1", "--chunk-size", "1000").exit_code == 0
    built_in = service.store.series_summary(SeriesKey("EURUSD", "M1"))[0]

    rows = {s: json.loads(cli("sets", "--format", "json", *args).output)
            for s, args in (("mkt", ["--source", "mkt"]), ("", []))}
    assert [r["rows"] for r in rows["mkt"]] == [mine.num_rows]
    assert [r["rows"] for r in rows[""]] == [built_in] != [mine.num_rows]

    shown = json.loads(cli("series", "--source", "mkt", "--format", "json").output)
    m1 = next(r for r in shown if r["granularity"] == "M1")
    assert m1["candles"] == mine.num_rows and [s["rows"] for s in m1["sets"]] == [mine.num_rows]
    assert {r["granularity"] for r in shown} >= {"M1", "M5", "H1"}  # stored and derived

    for source, args, n in (("mkt", ["--source", "mkt"], mine.num_rows), ("", [], built_in)):
        out = tmp_path / f"x{source}.parquet"
        r = cli("export", "--instrument", "EURUSD", "--granularity", "M1", "-o", str(out), *args)
        assert r.exit_code == 0, r.output
        meta = pq.read_schema(out).metadata
        assert meta[b"source"] == source.encode()
        assert json.loads(meta[b"gpubackfill"])["source"] == source
        assert pq.read_metadata(out).num_rows == n

    assert "up to date" in cli("update", "--source", "mkt").output
    for cmd in (["update"], ["series"], ["sets"], ["export", "--instrument", "EURUSD", "--granularity",
                                                  "M1", "-o", str(tmp_path / "y.parquet")]):
        r = cli(*cmd, "--source", "nope")
        assert r.exit_code == 2 and r.output.strip().splitlines() == [
            "error: no source named 'nope' (known: mkt; add one with `gpubackfill source add`)"], r.output


# ---------------------------------------------------------------------------
# a source's side

SIDE_PARAMS = {"enhanced_triple_barrier": {"side": "column", "horizon": 30, "vol_span": 20}}
SIDED = SeriesKey("EURUSD", "M1", "bets")


def sided_table(service, t: pa.Table) -> str:
    """``bets(symbol, time, o, h, l, c, pos)``: a Nullable(Int8) side with
    +1, -1, 0 and NULL, rows in random order."""
    from test_sources import shuffled

    rng = np.random.default_rng(5)
    side = rng.choice([1.0, -1.0, 0.0, np.nan], size=t.num_rows, p=[0.4, 0.3, 0.1, 0.2])
    rel = f"{service.store.db}.bets"
    service.store.command(f"""
        CREATE TABLE {rel} (symbol String, time DateTime64(3, 'UTC'), o Float64, h Float64,
            l Float64, c Float64, pos Nullable(Int8)) ENGINE = MergeTree ORDER BY time""")
    service.store.client.insert_arrow(rel, shuffled(pa.table({
        "symbol": ["EURUSD"] * t.num_rows, "time": t.column("ts").cast(pa.timestamp("ms", tz="UTC")),
        **{k: t.column(c) for k, c in (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"))},
        "pos": pa.array(np.nan_to_num(side).astype(np.int8), mask=np.isnan(side))})))
    return rel


BET_MAPS = MAPS[:1] + ["ts=time", "open=o", "high=h", "low=l", "close=c", "side=pos"]


def test_a_window_print_with_sides_in_clickhouse_equals_the_one_made_in_python(service):
    service.init()
    t = candles(end="2024-01-03")
    service.sources.add("bets", sided_table(service, t), BET_MAPS, granularity="M1")
    loaded, first, own = service.store.load(SIDED, int(t.column("ts")[100].as_py()),
                                            int(t.column("ts")[900].as_py()), 50, 30, side=True)
    ts = loaded.column("ts").to_numpy()
    assert loaded.column("side").null_count > 0
    py = fingerprint.chunk_print(loaded, first, own, 50, 30, int(ts[first]), int(ts[first + own]), True)
    window, stamp, _ = fingerprint.parse(py)
    assert service.store.window_prints(SIDED, [window]) == [stamp]
    unsided = fingerprint.chunk_print(loaded, first, own, 50, 30, int(ts[first]), int(ts[first + own]))
    assert fingerprint.parse(unsided)[1] != stamp  # the sides are in it


def test_a_side_changed_in_a_source_makes_exactly_the_chunks_the_halo_reaches_stale(service):
    service.init()
    t = candles(end="2024-01-06")
    rel = sided_table(service, t)
    service.sources.add("bets", rel, BET_MAPS, granularity="M1")
    tb = ["enhanced_triple_barrier"]
    job = service.start("EURUSD", "M1", labels=tb, params=SIDE_PARAMS, chunk_size=CHUNK, workers=2,
                        source="bets")
    set_id = service.job(job).model_dump()["label_set"]
    before = {(a, b): at for i, g, s, a, b, rows, inc, at in service.store.manifest("bets")}
    assert len(before) >= 5 and service.plan_update(source="bets", chunk_size=CHUNK, workers=2) == []
    ts = t.column("ts").to_numpy()
    m = int(np.searchsorted(ts, sorted(a for a, _ in before)[3])) + 3
    service.store.command(f"ALTER TABLE {rel} UPDATE pos = if(ifNull(pos, 0) = 1, -1, 1) "
                          f"WHERE toUnixTimestamp64Milli(time) = {int(ts[m])} SETTINGS mutations_sync = 2")
    back, ahead = halo(resolve(tb, SIDE_PARAMS))
    expected = halo_reaches(ts, before, back, ahead, lambda lo, hi: lo <= m < hi)
    assert 2 <= len(expected) < len(before)

    plans = service.plan_update(source="bets", chunk_size=CHUNK, workers=2)
    assert [p["stale_chunks"] for p in plans] == [len(expected)]
    for p in plans:
        service.execute(p["job_id"])
    after = {(a, b): at for i, g, s, a, b, rows, inc, at in service.store.manifest("bets")}
    assert {r for r, at in before.items() if after[r] != at} == expected

    service.sources.add("fresh", rel, BET_MAPS, granularity="M1")
    fresh = service.start("EURUSD", "M1", labels=tb, params=SIDE_PARAMS, chunk_size=CHUNK, workers=2,
                          source="fresh")
    assert service.job(fresh).model_dump()["label_set"] == set_id
    mine = service.store.read_labels(SIDED, set_id)
    again = service.store.read_labels(SeriesKey("EURUSD", "M1", "fresh"), set_id)
    assert mine.num_rows == again.num_rows == t.num_rows
    assert mine.equals(again)
    assert service.plan_update(source="bets", chunk_size=CHUNK, workers=2) == []


def test_update_over_a_source_aggregates_no_granularity_it_has_no_labels_for(service):
    """A source of M1 derives M5 … W1 by aggregating it: ``update`` asks for
    the series it has labels for (M1 here), not every derived one."""
    from test_sources import rows_read

    service.init()
    rel = foreign_table(service, candles(end="2024-01-04"))
    service.sources.add("mkt", rel, MAPS, granularity="M1")
    service.start("EURUSD", "M1", chunk_size=CHUNK, workers=2, source="mkt")
    plans: list = []
    seen = rows_read(service, lambda: plans.append(service.plan_update(source="mkt")))
    assert plans == [[]]
    assert [sql for sql, _ in seen if "argMin(open, ts)" in sql] == []   # no derived bars built
    assert any("sumWithOverflow" in sql for sql, _ in seen)            # the prints were asked


def test_an_update_with_nothing_changed_reads_each_candle_once(service):
    """The prints' grouped query is the one full read: the planner asks only
    for each series' last candle (from the key, in a table kept in time
    order), not a count of the source."""
    service.init()
    t = candles(end="2024-01-06")
    rel = f"{service.store.db}.ohlc_m1"
    service.store.command(f"""
        CREATE TABLE {rel} (symbol LowCardinality(String), time DateTime('America/New_York'),
            o Float32, h Float32, l Float32, c Float32, v Nullable(Float32), note String)
        ENGINE = MergeTree ORDER BY (symbol, time) SETTINGS index_granularity = 256""")
    insert_foreign(service, rel, t)
    service.store.command(f"OPTIMIZE TABLE {rel} FINAL")
    service.sources.add("mkt", rel, MAPS + ["volume=v"], granularity="M1")
    service.start("EURUSD", "M1", chunk_size=CHUNK, workers=2, source="mkt")
    plans: list = []
    seen = rows_read(service, lambda: plans.append(service.plan_update(source="mkt", chunk_size=CHUNK,
                                                                       workers=2)))
    assert plans == [[]]
    assert any("roundDown" in sql for sql, _ in seen)  # the prints were read through this client
    read = sum(n for _, n in seen)
    assert t.num_rows <= read <= t.num_rows + 4 * 256, [(" ".join(s.split())[:80], n) for s, n in seen]
