"""Sides and barrier grids through the engine (real chDB and Redis): a
``side`` column ingested with the candles, a job with ``side="column"`` or
``barrier_grid`` storing exactly what ``compute_labels`` gives on the same
candles across chunk boundaries, a changed side making its chunks stale,
bad sides refused whole, and list columns exported to Parquet and CSV."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from test_cli import cli, env_for, run_cli  # noqa: F401 - the in-process CLI fixture

from gpubackfill import compute_labels
from gpubackfill.candles.synthetic import generate
from gpubackfill.errors import InvalidCandles
from gpubackfill.labels import halo, resolve
from gpubackfill.storage.clickhouse_store import SeriesKey, Store

pytestmark = pytest.mark.integration

TB = "enhanced_triple_barrier"
GRID = "barrier_grid"
KEY = SeriesKey("EURUSD", "H1")
GRID_PARAMS = {GRID: {"pts": [1.0, 2.5], "sls": [0.5, 1.5], "horizons": [3, 40], "vol_span": 20}}
SIDE_PARAMS = {TB: {"side": "column", "horizon": 30, "vol_span": 20, "weights": True}}


def candles(start="2024-01-01", end="2024-03-01") -> pa.Table:
    return generate(KEY.instrument, KEY.granularity, start, end)


def with_sides(table: pa.Table, seed: int = 3) -> pa.Table:
    """+1, -1, 0 and NULL sides, at random."""
    rng = np.random.default_rng(seed)
    side = rng.choice([1.0, -1.0, 0.0, np.nan], size=table.num_rows, p=[0.4, 0.3, 0.1, 0.2])
    return table.append_column("side", pa.array(side, from_pandas=True))


def stored_and_expected(service, table: pa.Table, labels: list[str], params: dict
                        ) -> tuple[pa.Table, pa.Table]:
    """The job's rows as exported, and compute_labels' rows at the same ts."""
    stored = service.export(KEY.instrument, KEY.granularity, labels, params)
    whole = compute_labels(table, labels, params, output="arrow")
    at = np.searchsorted(whole.column("ts").to_numpy(), stored.column("ts").to_numpy())
    return stored, whole.take(pa.array(at))


def assert_columns_equal(stored: pa.Table, want: pa.Table) -> None:
    for name in want.column_names:
        got, exp = stored.column(name).combine_chunks(), want.column(name).combine_chunks()
        assert got.type == exp.type, (name, got.type, exp.type)
        assert got.equals(exp), (name, got.to_pylist()[:5], exp.to_pylist()[:5])


def run_job(service, labels, params, chunk_size=97) -> dict:
    job = service.create_job(KEY.instrument, KEY.granularity, "2024-01-01", "2024-03-01",
                             labels=labels, params=params, chunk_size=chunk_size, workers=2)
    assert service.execute(job).status == "completed"
    return service.job(job).model_dump()


# ---------------------------------------------------------------------------
# barrier_grid


def test_a_grid_job_stores_exactly_what_compute_labels_gives(service):
    table = candles()
    service.ingest_table(KEY, table)
    s = run_job(service, [GRID], GRID_PARAMS)
    assert s["chunks_total"] > 5  # boundaries inside the horizon and the volatility's look-back
    stored, want = stored_and_expected(service, table, [GRID], GRID_PARAMS)
    assert stored.num_rows == table.num_rows
    assert_columns_equal(stored, want)
    # The lists are the contract's: eight combinations, some elements NULL at the end.
    g = stored.column("grid_label").combine_chunks()
    assert set(pc_lengths(g)) == {8}
    assert g[-1].as_py()[1] is None and g[-1].as_py()[0] is None


def pc_lengths(lists: pa.Array) -> list[int]:
    import pyarrow.compute as pc

    return pc.list_value_length(lists).to_pylist()


def test_grid_rows_near_the_end_count_as_incomplete(service):
    table = candles()
    service.ingest_table(KEY, table)
    run_job(service, [GRID], GRID_PARAMS, chunk_size=400)
    cov = service.series_overview(KEY.instrument, KEY.granularity)[0].sets[0]
    # Rows within the longest horizon of the end where some combination
    # has no exit yet for lack of future candles.
    whole = compute_labels(table, [GRID], GRID_PARAMS, output="arrow")
    tail = whole.column("grid_label").to_pylist()[-40:]
    expected = sum(None in row for row in tail)
    assert 0 < expected < 40
    assert cov.incomplete == expected and cov.stale_chunks == 0


def test_grid_export_to_parquet_keeps_list_columns_and_to_csv_writes_json_arrays(service, tmp_path):
    table = candles()
    service.ingest_table(KEY, table)
    run_job(service, [GRID], GRID_PARAMS, chunk_size=500)
    stored = service.export(KEY.instrument, KEY.granularity, [GRID], GRID_PARAMS)

    out = tmp_path / "grid.parquet"
    service.export_file(out, KEY.instrument, KEY.granularity, [GRID], GRID_PARAMS)
    back = pq.read_table(out)
    for name in ("grid_label", "grid_exit_bars", "grid_exit_return", "grid_flags"):
        assert pa.types.is_list(back.schema.field(name).type)
        assert back.column(name).combine_chunks().equals(stored.column(name).combine_chunks()), name

    out_csv = tmp_path / "grid.csv"
    service.export_file(out_csv, KEY.instrument, KEY.granularity, [GRID], GRID_PARAMS)
    text = pcsv.read_csv(out_csv, convert_options=pcsv.ConvertOptions(
        column_types={n: pa.string() for n in ("grid_label", "grid_exit_bars", "grid_exit_return",
                                               "grid_flags")}))
    assert text.num_rows == stored.num_rows
    for name in ("grid_label", "grid_exit_bars", "grid_exit_return", "grid_flags"):
        cells = [json.loads(c) for c in text.column(name).to_pylist()]
        assert cells == stored.column(name).to_pylist(), name
    assert "null" in text.column("grid_label")[-1].as_py()


# ---------------------------------------------------------------------------
# sides


def test_a_side_job_stores_exactly_what_compute_labels_gives(service):
    table = with_sides(candles())
    service.ingest_table(KEY, table)
    s = run_job(service, [TB], SIDE_PARAMS)
    assert s["chunks_total"] > 5
    stored, want = stored_and_expected(service, table, [TB], SIDE_PARAMS)
    assert stored.num_rows == table.num_rows
    assert "tb_meta" in stored.column_names
    assert_columns_equal(stored, want)
    no_side = np.isnan(table.column("side").to_numpy(zero_copy_only=False)) | (
        table.column("side").to_numpy(zero_copy_only=False) == 0)
    assert np.array_equal(stored.column("tb_flags").to_numpy() & 32 != 0, no_side)


def test_a_grid_and_a_side_in_one_job_across_a_pack_of_small_chunks(service):
    table = with_sides(candles("2024-01-01", "2024-01-20"))
    service.ingest_table(KEY, table)
    labels, params = [TB, GRID], {**SIDE_PARAMS, **GRID_PARAMS}
    s = run_job(service, labels, params, chunk_size=23)
    assert s["chunks_total"] > 10
    stored, want = stored_and_expected(service, table, labels, params)
    assert_columns_equal(stored, want)


def test_a_changed_side_makes_its_chunks_stale_and_update_recomputes_them(service):
    table = with_sides(candles())
    service.ingest_table(KEY, table)
    run_job(service, [TB], SIDE_PARAMS, chunk_size=200)
    assert service.plan_update() == []
    side = table.column("side").to_numpy(zero_copy_only=False).copy()
    row = 500
    side[row] = -1.0 if side[row] == 1.0 else 1.0
    changed = table.set_column(table.column_names.index("side"), "side",
                               pa.array(side, from_pandas=True))
    report = service.ingest_table(KEY, changed)
    assert (report.updated, report.inserted) == (1, 0)
    cov = service.series_overview(KEY.instrument, KEY.granularity)[0].sets[0]
    # The chunks (of 200 rows) whose rows, look-back or look-ahead hold row 500.
    back, ahead = halo(resolve([TB], SIDE_PARAMS))
    stale = [a for a in range(0, table.num_rows, 200) if a - ahead <= row < a + 200 + back]
    assert 1 < len(stale) < cov.chunks
    assert cov.stale_chunks == len(stale)
    plans = service.plan_update(chunk_size=200)
    assert len(plans) == 1 and plans[0]["stale_chunks"] == len(stale)
    assert service.execute(plans[0]["job_id"]).status == "completed"
    stored, want = stored_and_expected(service, changed, [TB], SIDE_PARAMS)
    assert_columns_equal(stored, want)
    before = compute_labels(table, [TB], SIDE_PARAMS, output="arrow")
    assert stored.column("tb_label")[row].as_py() != before.column("tb_label")[row].as_py() or \
        stored.column("tb_meta")[row].as_py() != before.column("tb_meta")[row].as_py() or \
        stored.column("tb_flags")[row].as_py() != before.column("tb_flags")[row].as_py()
    assert service.plan_update() == []


def test_reingesting_the_same_sides_changes_nothing(service):
    table = with_sides(candles("2024-01-01", "2024-01-10"))
    service.ingest_table(KEY, table)
    report = service.ingest_table(KEY, table)
    assert (report.inserted, report.updated, report.unchanged) == (0, 0, table.num_rows)


def test_a_side_job_on_candles_without_sides_marks_every_row_no_side(service):
    table = candles("2024-01-01", "2024-01-20")
    service.ingest_table(KEY, table)
    run_job(service, [TB], SIDE_PARAMS, chunk_size=100)
    stored = service.export(KEY.instrument, KEY.granularity, [TB], SIDE_PARAMS)
    assert stored.column("tb_label").null_count == stored.num_rows
    assert np.all(stored.column("tb_flags").to_numpy() & 32)


def test_a_side_column_in_a_csv_or_parquet_file_is_ingested(cli, service, tmp_path):
    table = with_sides(candles("2024-01-01", "2024-01-10"))
    for path in (tmp_path / "sides.csv", tmp_path / "sides.parquet"):
        if path.suffix == ".csv":
            pcsv.write_csv(table, path)
        else:
            pq.write_table(table, path)
        r = cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "H1")
        assert r.exit_code == 0, r.output
        got = service.store.arrow(
            f"SELECT side FROM {service.store.db}.candles WHERE instrument = 'EURUSD' ORDER BY ts")
        want = table.column("side").to_numpy(zero_copy_only=False)
        side = got.column("side").cast(pa.float64()).fill_null(np.nan).to_numpy()
        assert np.array_equal(side, want, equal_nan=True)


@pytest.mark.parametrize("value,message", [
    ("long", "column 'side', row 7 (line 9): not a number: 'long'"),
    ("2", "column 'side', row 7 (line 9): a side must be +1, -1, 0 or empty: 2.0"),
    ("0.5", "column 'side', row 7 (line 9): a side must be +1, -1, 0 or empty: 0.5"),
])
def test_a_bad_side_in_a_file_is_one_error_line_and_nothing_written(cli, tmp_path, value, message):
    table = candles("2024-01-01", "2024-01-03")
    side = pa.array(["1"] * 7 + [value] + ["-1"] * (table.num_rows - 8))
    path = tmp_path / "bad.csv"
    pcsv.write_csv(table.append_column("side", side), path)
    r = cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "H1")
    assert r.exit_code == 2, r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
    assert message in r.output
    assert json.loads(cli("series", "--format", "json").output) == []


def test_a_bad_side_in_a_parquet_file_names_its_row(cli, tmp_path):
    table = candles("2024-01-01", "2024-01-03")
    side = np.ones(table.num_rows)
    side[11] = -2.0
    path = tmp_path / "bad.parquet"
    pq.write_table(table.append_column("side", pa.array(side)), path)
    r = cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "H1")
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "column 'side', row 11: a side must be +1, -1, 0 or empty: -2.0" in r.output


def test_a_bad_side_in_a_table_is_refused_whole(service):
    table = candles("2024-01-01", "2024-01-03")
    side = np.zeros(table.num_rows)
    side[5] = 3.0
    with pytest.raises(InvalidCandles, match="side at row 5 is 3"):
        service.ingest_table(KEY, table.append_column("side", pa.array(side)))
    texts = pa.array(["long"] * table.num_rows)
    with pytest.raises(InvalidCandles, match="column side must be numeric"):
        service.ingest_table(KEY, table.append_column("side", texts))
    assert not service.store.has_series(KEY)


def test_a_store_made_before_sides_gains_the_column(settings):
    store = Store(settings)
    store.command(f"CREATE DATABASE IF NOT EXISTS {store.db}")
    store.command(f"""
        CREATE TABLE {store.db}.candles (
            instrument LowCardinality(String), granularity LowCardinality(String),
            ts DateTime64(3, 'UTC'), open Float64, high Float64, low Float64, close Float64,
            volume Float64
        ) ENGINE = MergeTree ORDER BY (instrument, granularity, ts)""")
    store.command(f"INSERT INTO {store.db}.candles VALUES ('EURUSD', 'H1', 0, 1, 1, 1, 1, 0)")
    store.init_schema()
    assert store.rows(f"SELECT side FROM {store.db}.candles") == [(None,)]


# ---------------------------------------------------------------------------
# a source's side


def test_a_source_maps_a_side_column_for_stored_and_derived_bars(service):
    service.init()
    m1 = with_sides(generate("EURUSD", "M1", "2024-01-02", "2024-01-05"), seed=5)
    db = service.store.db
    service.store.command(f"""
        CREATE TABLE {db}.bets (symbol String, time DateTime64(3, 'UTC'), o Float64, h Float64,
            l Float64, c Float64, pos Nullable(Int8)) ENGINE = MergeTree ORDER BY time""")
    side = m1.column("side").to_numpy(zero_copy_only=False)
    service.store.client.insert_arrow(f"{db}.bets", pa.table({
        "symbol": ["EURUSD"] * m1.num_rows,
        "time": m1.column("ts").cast(pa.timestamp("ms", tz="UTC")),
        **{k: m1.column(c) for k, c in (("o", "open"), ("h", "high"), ("l", "low"), ("c", "close"))},
        "pos": pa.array(np.nan_to_num(side).astype(np.int8), mask=np.isnan(side))}))
    service.sources.add("bets", f"{db}.bets", ["instrument=symbol", "ts=time", "open=o", "high=h",
                                               "low=l", "close=c", "side=pos"], granularity="M1")
    # M5 bars made from the M1 rows, each with the side of its last minute.
    df = m1.to_pandas()
    df["bar"] = df["ts"] // 300_000 * 300_000
    m5 = df.groupby("bar").agg(open=("open", "first"), high=("high", "max"), low=("low", "min"),
                               close=("close", "last")).reset_index()
    last = df.groupby("bar")["side"].apply(lambda s: s.iloc[-1]).to_numpy()  # a NULL too
    m5 = pa.table({"ts": m5["bar"].to_numpy(), **{c: m5[c].to_numpy() for c in ("open", "high", "low",
                                                                                 "close")},
                   "side": pa.array(last, from_pandas=True)})
    for gran, table in (("M1", m1), ("M5", m5)):
        job = service.start("EURUSD", gran, labels=[TB], params=SIDE_PARAMS, chunk_size=300,
                            workers=2, source="bets")
        s = service.job(job).model_dump()
        assert s["status"] == "completed" and s["chunks_total"] > 1
        stored = service.store.read_labels(SeriesKey("EURUSD", gran, "bets"), s["label_set"])
        want = compute_labels(table, [TB], SIDE_PARAMS, output="arrow")
        assert stored.num_rows == want.num_rows
        assert_columns_equal(stored.select(want.column_names), want)


def test_sides_of_several_series_packed_in_one_chunk(service):
    """Series' tails packed together are read in one query, sides included."""
    tables = {}
    for n, inst in enumerate(("EURUSD", "GBPUSD", "USDJPY")):
        tables[inst] = with_sides(generate(inst, "H1", "2024-01-01", "2024-01-05"), seed=n)
        service.ingest_table(SeriesKey(inst, "H1"), tables[inst])
    job = service.start("EURUSD,GBPUSD,USDJPY", "H1", labels=[TB], params=SIDE_PARAMS,
                        chunk_size=40, workers=2)
    s = service.job(job).model_dump()
    assert s["status"] == "completed"
    assert any(len(segs) > 1 for segs in service.state.plan(job).values())  # a pack
    for inst, table in tables.items():
        stored = service.store.read_labels(SeriesKey(inst, "H1"), s["label_set"])
        want = compute_labels(table, [TB], SIDE_PARAMS, output="arrow")
        assert_columns_equal(stored.select(want.column_names), want)
