"""Export, the step every backfill ends with: timestamp types, which label
set a request means, provenance in the file, candles alongside, streaming."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_cli import cli, env_for  # noqa: F401 - the in-process CLI fixture

from gpubackfill.candles.synthetic import generate
from gpubackfill.errors import InvalidInput
from gpubackfill.storage.clickhouse_store import SeriesKey

START, END = "2024-01-01", "2024-01-20"
H48 = ["--labels", "enhanced_triple_barrier", "mfe_mae", "--param", "enhanced_triple_barrier.horizon=48"]


@pytest.fixture
def computed(service):
    """EURUSD M15 with one label set: triple barrier (horizon 48) and MFE/MAE."""
    candles = generate("EURUSD", "M15", START, END)
    service.ingest_table(SeriesKey("EURUSD", "M15"), candles)
    job = service.start("EURUSD", "M15", START, END, ["enhanced_triple_barrier", "mfe_mae"],
                        {"enhanced_triple_barrier": {"horizon": 48}}, chunk_size=500, workers=1)
    return candles, service.job(job).model_dump()


def export(cli, tmp_path, *args, name="labels.parquet"):
    out = tmp_path / name
    return cli("export", "--instrument", "EURUSD", "--granularity", "M15", *args, "-o", str(out)), out


def test_parquet_ts_is_a_utc_timestamp_and_csv_ts_is_iso_text(cli, computed, tmp_path):
    candles, s = computed
    r, out = export(cli, tmp_path, *H48)
    assert r.exit_code == 0, r.output
    df = pd.read_parquet(out)
    assert str(df["ts"].dtype) == "datetime64[ms, UTC]" and len(df) == s["candles_total"]
    assert df["ts"].iloc[0] == pd.Timestamp("2024-01-01T00:00:00Z")
    r, out = export(cli, tmp_path, *H48, name="labels.csv")
    lines = out.read_text().splitlines()
    assert lines[0].split(",")[0] == '"ts"' and lines[1].startswith('"2024-01-01T00:00:00.000Z"')
    assert len(lines) == s["candles_total"] + 1


def test_a_set_never_computed_names_the_sets_there_are_and_writes_nothing(cli, computed, tmp_path):
    _, s = computed
    r, out = export(cli, tmp_path, "--labels", "enhanced_triple_barrier", "mfe_mae")  # no horizon
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: ")
    assert "never computed for EURUSD M15" in r.output
    assert "enhanced_triple_barrier(horizon=48) mfe_mae" in r.output and s["label_set"] in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # Without --labels the series' one set is a fair default ...
    r, out = export(cli, tmp_path)
    assert r.exit_code == 0 and f"of label set {s['label_set']}" in r.output
    assert pq.read_table(out).num_rows == s["candles_total"]


def test_with_several_sets_no_labels_lists_them_and_set_picks_one(cli, computed, service, tmp_path):
    _, first = computed
    other = service.start("EURUSD", "M15", START, END, ["vol_scaled_return"], None,
                          chunk_size=500, workers=1)
    second = service.job(other).model_dump()["label_set"]
    out = tmp_path / "x.parquet"
    out.write_bytes(b"old")
    r = cli("export", "--instrument", "EURUSD", "--granularity", "M15", "-o", str(out))
    assert r.exit_code == 2 and "has 2 label sets; choose one with --set ID" in r.output
    assert first["label_set"] in r.output and second in r.output and "vol_scaled_return" in r.output
    assert out.read_bytes() == b"old"  # a refused export leaves the old file alone
    r = cli("export", "--instrument", "EURUSD", "--granularity", "M15", "--set", second, "-o", str(out))
    assert r.exit_code == 0, r.output
    assert pq.read_table(out).column_names == ["ts", "vsr_1", "vsr_5", "vsr_20", "sigma"]
    r = cli("export", "--instrument", "EURUSD", "--granularity", "M15", "--set", "0" * 16, "-o", str(out))
    assert r.exit_code == 2 and "no label set '0000000000000000' for EURUSD M15; it has:" in r.output


def test_the_file_records_what_its_labels_are(cli, computed, tmp_path):
    _, s = computed
    r, out = export(cli, tmp_path, *H48)
    meta = pq.read_schema(out).metadata
    assert meta[b"instrument"] == b"EURUSD" and meta[b"granularity"] == b"M15"
    assert meta[b"label_set"].decode() == s["label_set"]
    info = json.loads(meta[b"gpubackfill"])
    tb = info["labels"]["enhanced_triple_barrier"]
    assert tb["horizon"] == 48 and tb["pt"] == 1.0 and tb["vol_span"] == 100  # defaults included
    assert info["labels"]["mfe_mae"] == {"horizon": 24}
    assert json.loads(meta[b"labels"]) == info["labels"]


def test_with_candles_puts_ohlcv_after_ts(cli, computed, tmp_path):
    candles, _ = computed
    r, out = export(cli, tmp_path, "--with-candles", "--start-date", "2024-01-05",
                    "--end-date", "2024-01-06")
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    assert t.column_names[:7] == ["ts", "open", "high", "low", "close", "volume", "tb_label"]
    ts = t.column("ts").cast(pa.int64()).to_numpy()
    src = candles.column("ts").to_numpy()
    assert ts[0] == pd.Timestamp("2024-01-05", tz="UTC").value // 10**6
    assert ts[-1] < pd.Timestamp("2024-01-07", tz="UTC").value // 10**6  # the end day included
    idx = np.searchsorted(src, ts)
    for c in ("open", "high", "low", "close", "volume"):
        np.testing.assert_array_equal(t.column(c).to_numpy(), candles.column(c).to_numpy()[idx])


def test_with_t1_each_row_ends_at_its_exit_bar_as_event_end_says(cli, computed, tmp_path,
                                                                 monkeypatch):
    """t1 is ``event_end`` over the series' own candles: exits reach past
    their batch (97 rows) and past the exported range, across weekends."""
    from gpubackfill import event_end
    from gpubackfill.storage import export as export_mod

    candles, _ = computed
    monkeypatch.setattr(export_mod, "BATCH_ROWS", 97)
    r, whole = export(cli, tmp_path, *H48, name="whole.parquet")
    assert r.exit_code == 0, r.output
    labels = pq.read_table(whole)
    assert labels.column("ts").cast(pa.int64()).to_numpy().tolist() == candles.column("ts").to_pylist()
    want = event_end(candles.column("ts"), labels.column("tb_exit_bars"))  # the whole series
    r, out = export(cli, tmp_path, *H48, "--with-t1", name="whole_t1.parquet")
    assert r.exit_code == 0, r.output
    got = pq.read_table(out).column("t1").cast(pa.int64())
    assert got.equals(want) and 0 < got.null_count < len(got)  # NULL where tb_exit_bars is
    r, out = export(cli, tmp_path, *H48, "--with-t1", "--start-date", "2024-01-05",
                    "--end-date", "2024-01-12")
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    assert t.column_names[:3] == ["ts", "t1", "tb_label"]
    assert t.schema.field("t1").type == pa.timestamp("ms", tz="UTC")
    ts = t.column("ts").cast(pa.int64()).to_numpy()
    rows = np.searchsorted(candles.column("ts").to_numpy(), ts)
    got = t.column("t1").cast(pa.int64())
    assert got.equals(want.take(pa.array(rows)))
    end_ms = pd.Timestamp("2024-01-13", tz="UTC").value // 10**6
    assert pa.compute.max(got).as_py() >= end_ms  # an exit after the range
    gaps = got.to_numpy(zero_copy_only=False) - ts
    assert np.nanmax(gaps) > 48 * 15 * 60_000  # an exit across a weekend
    assert json.loads(pq.read_schema(out).metadata[b"gpubackfill"])["with_t1"] is True
    r, out = export(cli, tmp_path, *H48, "--with-t1", "--start-date", "2024-01-05",
                    "--end-date", "2024-01-12", name="labels.csv")
    assert r.exit_code == 0, r.output
    csv = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(csv.columns[:2]) == ["ts", "t1"]
    text = pd.to_datetime(t.column("t1").to_pandas()).dt.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert csv["t1"].tolist() == text.fillna("").tolist()


def test_with_t1_needs_the_triple_barrier_in_the_exported_labels(cli, computed, tmp_path):
    _, s = computed
    r, out = export(cli, tmp_path, "--set", s["label_set"], "--labels", "mfe_mae", "--with-t1")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and r.output.startswith("error: ")
    assert "--with-t1 needs tb_exit_bars (enhanced_triple_barrier)" in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_an_empty_range_names_the_range_there_is(cli, computed, tmp_path):
    r, out = export(cli, tmp_path, "--start-date", "2023-01-01", "--end-date", "2023-02-01")
    assert r.exit_code == 2 and "they cover 2024-01-01T00:00:00.000Z to 2024-01-19T21:45:00.000Z" in r.output
    assert not out.exists()


def test_export_streams_in_batches_in_ts_order(computed, service, tmp_path):
    from gpubackfill.storage import export as export_mod

    key = SeriesKey("EURUSD", "M15")
    chosen = export_mod.sets_of(service.store, key)[0]
    parts = list(export_mod.batches(service.store, key, chosen, None, None, True, batch_rows=97))
    assert len(parts) > 10 and all(p.num_rows <= 97 for p in parts)
    whole = pa.concat_tables(parts)
    ts = whole.column("ts").cast(pa.int64()).to_numpy()
    assert whole.num_rows == chosen.rows and np.all(np.diff(ts) > 0)
    assert whole.equals(service.export("EURUSD", "M15", set_id=chosen.set_id, with_candles=True)
                        .set_column(0, "ts", whole.column("ts")).replace_schema_metadata(None))


def test_batch_starts_bound_every_batch_where_rows_are_uneven(service):
    """Five rows years before a dense run of 3,000: the run falls in one
    interval of the first count, which is counted again more finely."""
    from gpubackfill.labels import resolve

    store = service.store
    service.init()
    set_id = store.ensure_label_table(resolve(["mfe_mae"]))
    key = SeriesKey("EURUSD", "M1")
    early = 1_000_000_000_000 + np.arange(5, dtype=np.int64) * 86_400_000 * 300
    dense = 1_700_000_000_000 + np.arange(3000, dtype=np.int64) * 60_000
    ts = np.concatenate([early, dense])
    labels = pa.table({"ts": ts, "mfe": np.ones(len(ts)), "mae": np.ones(len(ts)),
                       "mfe_bars": pa.array(np.ones(len(ts), np.int32)),
                       "mae_bars": pa.array(np.ones(len(ts), np.int32))})
    store.write_labels(key, set_id, int(ts[0]), int(ts[-1]) + 1, labels, "h", 0, "t")
    for batch_rows, start, end in [(97, None, None), (1000, None, None), (50, int(dense[10]), int(dense[400]))]:
        starts = store.label_batch_starts(key, set_id, start, end, batch_rows)
        inside = ts[(ts >= (start or 0)) & (ts < (end or 2**62))]
        assert starts[0] == inside[0] and starts == sorted(set(starts))
        sizes = np.diff(np.searchsorted(inside, starts + [inside[-1] + 1]))
        assert sizes.sum() == len(inside) and sizes.max() <= batch_rows and sizes.min() > 0
        assert len(starts) <= 3 * len(inside) // batch_rows + 3  # batches are not tiny either


def test_a_file_written_in_small_batches_holds_every_row_in_order(service, computed, tmp_path, monkeypatch):
    from gpubackfill.storage import export as export_mod

    monkeypatch.setattr(export_mod, "BATCH_ROWS", 97)
    whole = service.export("EURUSD", "M15", set_id=None)
    rows, cols, _ = service.export_file(tmp_path / "l.parquet", "EURUSD", "M15")
    f = pq.ParquetFile(tmp_path / "l.parquet")
    assert (rows, cols) == (whole.num_rows, whole.num_columns) and f.metadata.num_row_groups > 10
    got = f.read()
    assert got.schema.metadata == whole.schema.metadata
    assert got.set_column(0, "ts", got.column("ts").cast(pa.int64())).replace_schema_metadata(None) \
        .equals(whole.replace_schema_metadata(None))
    service.export_file(tmp_path / "l.csv", "EURUSD", "M15")
    lines = (tmp_path / "l.csv").read_text().splitlines()
    assert len(lines) == whole.num_rows + 1 and lines[1:] == sorted(lines[1:])


def test_an_export_that_fails_midway_leaves_no_file(tmp_path):
    from gpubackfill.storage import export as export_mod

    def parts():
        for i in range(3):
            yield pa.table({"ts": pa.array([i], export_mod.TS_TYPE), "x": [1.0]})
        raise RuntimeError("the store went away")

    out = tmp_path / "x.parquet"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="went away"):
        export_mod.write(out, parts(), {})
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.parquet"]


def test_labels_lists_the_registry_with_defaults_ranges_and_outputs(cli):
    from gpubackfill.labels import REGISTRY

    r = cli("labels", "--format", "json")
    entries = {e["name"]: e for e in json.loads(r.output)}
    assert set(entries) == set(REGISTRY)
    horizon = next(p for p in entries["enhanced_triple_barrier"]["params"] if p["name"] == "horizon")
    assert horizon["default"] == 24 and horizon["minimum"] == 1 and horizon["kind"] == "int"
    tie = next(p for p in entries["enhanced_triple_barrier"]["params"] if p["name"] == "tie")
    assert tie["choices"] == ["sl", "tp", "skip"]
    outputs = {o["name"]: o for e in entries.values() for o in e["outputs"]}
    assert outputs["tb_label"]["type"] == "int8, nullable" and outputs["tb_flags"]["type"] == "uint8"
    assert all(o["meaning"] for o in outputs.values())
    table = cli("labels").output
    assert "enhanced_triple_barrier.horizon=" in table and "vsr_5" in table


def test_every_column_the_registry_can_produce_has_a_meaning():
    from gpubackfill.labels import REGISTRY
    from gpubackfill.labels.catalog import meaning

    for spec in REGISTRY.values():
        params = spec.resolve({"horizons": [2, 7, 300]} if spec.name == "vol_scaled_return" else {})
        for column, _ in spec.outputs(params):
            assert meaning(column), column


def test_sets_lists_computed_sets_with_parameters_and_rows(cli, computed):
    _, s = computed
    found = json.loads(cli("sets", "--format", "json").output)
    assert [(f["instrument"], f["granularity"], f["label_set"], f["rows"]) for f in found] == \
        [("EURUSD", "M15", s["label_set"], s["candles_total"])]
    assert found[0]["changed"] == {"enhanced_triple_barrier": {"horizon": 48}, "mfe_mae": {}}
    assert json.loads(cli("sets", "--instrument", "GBPUSD", "--format", "json").output) == []
    table = cli("sets", "--instrument", "eurusd").output
    assert s["label_set"] in table and "mfe_mae" in table


_MAKE = """
import sys
sys.path.insert(0, sys.argv[2])
import pyarrow as pa
from conftest import random_walk
from gpubackfill.compute import compute_labels
from gpubackfill.labels import resolve
from gpubackfill.service import BackfillService
from gpubackfill.storage.clickhouse_store import SeriesKey, _with_series
n = int(sys.argv[1])
svc = BackfillService()
svc.init()
c = pa.table(random_walk(n, seed=1))
key = SeriesKey("EURUSD", "M1")
svc.store.insert_arrow("candles", _with_series(key, c))
names = ["mfe_mae", "enhanced_triple_barrier"]
set_id = svc.store.ensure_label_table(resolve(names))
ts = c.column("ts").to_numpy()
svc.store.write_labels(key, set_id, int(ts[0]), int(ts[-1]) + 1, compute_labels(c, names), "h", 0, "t")
"""


def test_an_export_of_10m_rows_streams_under_2gb(tmp_path, redis_socket):
    """10M label rows written straight into the store (a job would take
    minutes here), exported by a process whose peak RSS is measured."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from conftest import make_settings

    n = 10_000_000
    env = {**os.environ, **env_for(make_settings(tmp_path / "home", redis_socket))}
    subprocess.run([sys.executable, "-c", _MAKE, str(n), str(Path(__file__).resolve().parents[1])], env=env,
                   check=True, timeout=100)
    out = tmp_path / "big.parquet"
    proc = subprocess.Popen([sys.executable, "-m", "gpubackfill", "export", "--instrument", "EURUSD",
                             "--granularity", "M1", "-o", str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, proc.stderr.read()
    peak = usage.ru_maxrss * 1024  # kB on Linux
    meta = pq.read_metadata(out)
    assert meta.num_rows == n and meta.num_row_groups >= n // 500_000
    assert peak < 2 * 1024**3, f"peak RSS {peak / 1e9:.2f} GB"


@pytest.mark.parametrize("target", ["/sys/x.csv", "/proc/x.parquet"])
def test_an_output_that_cannot_be_written_is_one_line_naming_it(cli, computed, target):
    r = cli("export", "--instrument", "EURUSD", "--granularity", "M15", "-o", target)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert r.output.startswith(f"error: cannot write {target}: "), r.output
    assert ("Permission denied" if target.startswith("/sys") else "No such file") in r.output


MFE = ["mfe", "mae", "mfe_bars", "mae_bars"]


def test_some_labels_of_a_stored_set_export_just_their_columns(cli, computed, service, tmp_path):
    _, s = computed
    r, whole = export(cli, tmp_path, *H48, name="whole.parquet")
    r, out = export(cli, tmp_path, "--labels", "mfe_mae")
    assert r.exit_code == 0 and f"of label set {s['label_set']}" in r.output, r.output
    t = pq.read_table(out)
    assert t.column_names == ["ts", *MFE] and t.num_rows == s["candles_total"]
    assert t.equals(pq.read_table(whole).select(["ts", *MFE]).replace_schema_metadata(t.schema.metadata))
    meta = t.schema.metadata
    assert json.loads(meta[b"labels"]) == {"mfe_mae": {"horizon": 24}}
    assert meta[b"label_set"].decode() == s["label_set"]
    # --set with --labels picks columns of that set; a label it lacks is named.
    r, out = export(cli, tmp_path, "--set", s["label_set"], "--labels", "enhanced_triple_barrier",
                    name="tb.csv")
    assert r.exit_code == 0 and out.read_text().splitlines()[0].startswith('"ts","tb_label"')
    assert "mfe" not in out.read_text().splitlines()[0]
    r, _ = export(cli, tmp_path, "--set", s["label_set"], "--labels", "vol_scaled_return")
    assert r.exit_code == 2 and f"label set {s['label_set']} has no vol_scaled_return" in r.output
    # Other parameters than the set's are still never computed.
    r, _ = export(cli, tmp_path, "--labels", "mfe_mae", "--param", "mfe_mae.horizon=7")
    assert r.exit_code == 2 and "never computed for EURUSD M15" in r.output
    # Two sets holding the labels: the request names neither, so both are listed.
    other = service.start("EURUSD", "M15", START, END, ["mfe_mae", "vol_scaled_return"], None,
                          chunk_size=500, workers=1)
    r, _ = export(cli, tmp_path, "--labels", "mfe_mae")
    assert r.exit_code == 2 and "2 label sets of EURUSD M15 hold those labels" in r.output
    assert service.job(other).model_dump()["label_set"] in r.output and s["label_set"] in r.output


@pytest.fixture
def panel(service):
    """EURUSD and GBPUSD M15 with mfe_mae, computed by one job; USDJPY M15 candles without labels."""
    for inst in ("EURUSD", "GBPUSD", "USDJPY"):
        service.ingest_table(SeriesKey(inst, "M15"), generate(inst, "M15", START, "2024-01-06"))
    job = service.start(["EURUSD", "GBPUSD"], "M15", START, "2024-01-06", ["mfe_mae"], None,
                        chunk_size=200, workers=1)
    return service.job(job).model_dump()


def test_several_series_export_as_one_long_panel(cli, panel, service, tmp_path):
    singles = {i: service.export(i, "M15") for i in ("EURUSD", "GBPUSD")}
    for how in (["--instrument", "EURUSD,GBPUSD"], ["--instrument", "*"],
                ["--instrument", "EURUSD", "--instrument", "GBPUSD"]):
        out = tmp_path / "panel.parquet"
        r = cli("export", *how, "--granularity", "M15", "-o", str(out))
        assert r.exit_code == 0 and f"of label set {panel['label_set']}" in r.output, r.output
        t = pq.read_table(out)
        assert t.column_names == ["instrument", "granularity", "ts", *MFE]
        assert t.num_rows == panel["candles_total"] == sum(x.num_rows for x in singles.values())
        assert t.column("instrument").to_pylist() == ["EURUSD"] * singles["EURUSD"].num_rows + \
            ["GBPUSD"] * singles["GBPUSD"].num_rows
        assert set(t.column("granularity").to_pylist()) == {"M15"}
        for inst, single in singles.items():
            mine = t.filter(pa.compute.equal(t.column("instrument"), inst)).drop(["instrument", "granularity"])
            mine = mine.set_column(0, "ts", mine.column("ts").cast(pa.int64()))
            assert mine.equals(single.replace_schema_metadata(None).cast(mine.schema))
    info = json.loads(t.schema.metadata[b"gpubackfill"])
    assert info["instrument"] == "EURUSD,GBPUSD" and info["series"] == [["EURUSD", "M15"], ["GBPUSD", "M15"]]
    out = tmp_path / "panel.csv"
    assert cli("export", "--instrument", "*", "--granularity", "M15", "-o", str(out)).exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith('"instrument","granularity","ts","mfe"') and len(lines) == t.num_rows + 1
    assert lines[1].startswith('"EURUSD","M15","2024-01-01T00:00:00.000Z"')
    # A named series without those labels is named; nothing is written.
    out = tmp_path / "none.parquet"
    r = cli("export", "--instrument", "EURUSD,USDJPY", "--granularity", "M15", "-o", str(out))
    assert r.exit_code == 2 and "no labels computed for USDJPY M15" in r.output and not out.exists()
    # One file holds one set of labels: series whose only sets differ are refused.
    service.start("USDJPY", "M15", START, "2024-01-06", ["fixed_horizon"], None, chunk_size=500, workers=1)
    r = cli("export", "--instrument", "EURUSD,USDJPY", "--granularity", "M15", "-o", str(out))
    assert r.exit_code == 2 and "EURUSD M15 and USDJPY M15 hold different labels" in r.output
    assert not out.exists()


def test_a_panel_with_t1_ends_each_row_within_its_own_series(cli, service, tmp_path):
    from gpubackfill import event_end

    candles = {}
    for inst in ("EURUSD", "GBPUSD"):
        candles[inst] = generate(inst, "M15", START, "2024-01-06")
        service.ingest_table(SeriesKey(inst, "M15"), candles[inst])
    service.start(["EURUSD", "GBPUSD"], "M15", START, "2024-01-06", ["enhanced_triple_barrier"],
                  {"enhanced_triple_barrier": {"horizon": 12, "vol_span": 20}}, chunk_size=200,
                  workers=1)
    out = tmp_path / "panel.parquet"
    r = cli("export", "--instrument", "EURUSD,GBPUSD", "--granularity", "M15", "--with-t1",
            "-o", str(out))
    assert r.exit_code == 0, r.output
    t = pq.read_table(out)
    assert t.column_names[:4] == ["instrument", "granularity", "ts", "t1"]
    for inst, c in candles.items():
        mine = t.filter(pa.compute.equal(t.column("instrument"), inst))
        assert mine.column("ts").cast(pa.int64()).to_pylist() == c.column("ts").to_pylist()
        want = event_end(c.column("ts"), mine.column("tb_exit_bars"))
        assert mine.column("t1").cast(pa.int64()).equals(want)


def test_a_panel_streams_batch_by_batch_and_never_mixes_label_sets(panel, service, tmp_path):
    from gpubackfill.storage import export as export_mod

    chosen = export_mod.choose_panel(service.store, ["*"], ["M15"], None, None, None)
    parts = list(export_mod.panel_batches(service.store, chosen, None, None, False, batch_rows=97))
    assert len(parts) > 2 * (panel["candles_total"] // 2 // 97) and all(p.num_rows <= 97 for p in parts)
    assert all(len(set(p.column("instrument").to_pylist())) == 1 for p in parts)
    assert sum(p.num_rows for p in parts) == panel["candles_total"]
    # GBPUSD gets a second set: '*' without --labels is ambiguous there; with
    # --labels or --set each series answers with the same labels, and '*'
    # leaves out the series that lack them.
    job = service.start("GBPUSD", "M15", START, "2024-01-06", ["mfe_mae", "fixed_horizon"], None,
                        chunk_size=500, workers=1)
    second = service.job(job).model_dump()["label_set"]
    out = tmp_path / "x.parquet"
    with pytest.raises(InvalidInput, match="GBPUSD M15 has 2 label sets; choose one"):
        service.export_file(out, "*", "M15")
    for how in ({"labels": ["mfe_mae"]}, {"set_id": panel["label_set"]}):
        rows, cols, set_id = service.export_file(out, "*", "M15", **how)
        assert (rows, cols, set_id) == (panel["candles_total"], 7, panel["label_set"])
    rows, _, set_id = service.export_file(out, "*", "M15", labels=["fixed_horizon"])
    assert set_id == second and set(pq.read_table(out).column("instrument").to_pylist()) == {"GBPUSD"}
    with pytest.raises(InvalidInput, match=f"no label set '{second}' for EURUSD M15"):
        service.export_file(out, "EURUSD,GBPUSD", "M15", set_id=second)
    assert [p.name for p in tmp_path.iterdir()] == ["x.parquet"]
