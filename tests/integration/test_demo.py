"""`gpubackfill demo` next to a user's own data, run again, and skipped work in summaries."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pcsv
from test_cli import cli, csv_file  # noqa: F401 - fixtures

from gpubackfill.candles.synthetic import generate

# A week of M1 ending where the demo's range ends (2026-01-01).
DEMO = ("demo", "--instruments", "EURUSD", "--years", "0.02")


def _snapshot(service, instrument: str) -> bytes:
    """Every stored candle of a series and its ingest log, as bytes."""
    db = service.store.db
    where = f"instrument = '{instrument}' AND granularity = 'M1'"
    candles = service.store.arrow(f"SELECT * FROM {db}.candles WHERE {where} ORDER BY ts")
    changes = service.store.arrow(f"SELECT * FROM {db}.candle_changes WHERE {where} "
                                  f"ORDER BY changed_at, first_ts")
    sink = pa.BufferOutputStream()
    for t in (candles, changes):
        with pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t)
    return sink.getvalue().to_pybytes()


def test_the_demo_leaves_a_users_eurusd_untouched(cli, service, tmp_path):  # noqa: F811
    # The user's own EURUSD M1 inside the demo's range, as a broker exports it.
    mine = generate("EURUSD", "M1", "2025-12-29", "2025-12-31", seed=20240419)
    path = tmp_path / "EURUSD_M1.csv"
    pcsv.write_csv(mine.rename_columns(["Time", "Open", "High", "Low", "Close", "Volume"]), path)
    assert cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "M1").exit_code == 0
    r = cli("start", "--instrument", "EURUSD", "--granularity", "M1", "--start-date", "2025-12-29",
            "--end-date", "2025-12-30", "--labels", "mfe_mae")
    assert r.exit_code == 0, r.output
    candles_before = _snapshot(service, "EURUSD")
    labels_before = service.export("EURUSD", "M1", ["mfe_mae"])

    r = cli(*DEMO)
    assert r.exit_code == 0, r.output
    assert "DEMO.EURUSD" in r.output
    assert f"{service.settings.chdb_path}, database {service.store.db}" in r.output
    assert _snapshot(service, "EURUSD") == candles_before
    assert service.export("EURUSD", "M1", ["mfe_mae"]).equals(labels_before)
    # The user's labels are still the only set of EURUSD: nothing new there.
    assert [s["label_set"] for s in json.loads(cli("sets", "--format", "json").output)
            if s["instrument"] == "EURUSD"] == [labels_before.schema.metadata[b"label_set"].decode()]
    series = {(i, g) for i, g, _ in service.store.instruments()}
    assert series == {("EURUSD", "M1"), ("DEMO.EURUSD", "M1")}


def test_the_demo_runs_again_and_after_other_label_sets(cli):  # noqa: F811
    first = cli(*DEMO)
    assert first.exit_code == 0, first.output
    assert "backfilled 7,200 candles" in first.output
    assert "serve" in first.output and ":8000/ui/" in first.output  # the console hint at the end
    again = cli(*DEMO)
    assert again.exit_code == 0, again.output
    # Nothing was computed: the skipped candles are no throughput.
    assert "nothing to backfill" in again.output and "candles/min" not in again.output
    assert "7,200 candles skipped" in again.output
    r = cli("start", "--instrument", "DEMO.EURUSD", "--granularity", "M1", "--start-date",
            "2025-12-26", "--end-date", "2025-12-27", "--labels", "mfe_mae")
    assert r.exit_code == 0, r.output
    third = cli(*DEMO)
    assert third.exit_code == 0, third.output
    sets = json.loads(cli("sets", "--format", "json").output)
    assert len(sets) == 2
    # The export it suggests names its own set, so it works with two sets there.
    (line,) = [x for x in third.output.splitlines() if " export " in x]
    demo_set = line.split("--set ")[1].split()[0]
    (line,) = [x for x in third.output.splitlines() if "# one job" in x]
    job = json.loads(cli("status", line.split()[-4], "--format", "json").output)
    assert demo_set == job["label_set"] and job["labels"] == ["enhanced_triple_barrier",
                                                              "vol_scaled_return", "mfe_mae"]


def test_a_run_that_skips_every_chunk_reports_them_as_skipped(cli, csv_file):  # noqa: F811
    path, n = csv_file
    cli("ingest", str(path), "--instrument", "EURUSD", "--granularity", "M15")
    args = ("start", "--instrument", "EURUSD", "--granularity", "M15", "--start-date", "2024-01-01",
            "--end-date", "2024-02-29", "--labels", "mfe_mae", "--chunk-size", "1000")
    r = cli(*args)
    assert r.exit_code == 0 and f"{n:,} candles computed" in r.output and "skipped" not in r.output
    r = cli(*args)
    assert r.exit_code == 0, r.output
    job = r.output.split()[1]
    s = json.loads(cli("status", job, "--format", "json").output)
    assert s["candles_done"] == s["candles_skipped"] == n and s["throughput_per_min"] == 0
    assert s["chunks_total"] > 1
    assert "nothing to compute, 0 label rows written" in r.output and "candles/min" not in r.output
    assert f"{n:,} candles skipped in {s['chunks_total']} chunks" in r.output


def test_the_demo_refuses_a_size_it_cannot_run(cli, service):  # noqa: F811
    for args, why in [(("--instruments", ","), "--instruments names no instrument"),
                      (("--years", "0"), "--years must be from 0.006 (two days) to 100, got 0"),
                      (("--years", "nan"), "got nan"), (("--years", "inf"), "got inf")]:
        r = cli("demo", *args)
        assert r.exit_code == 2 and r.output.startswith("error: ") and r.output.count("\n") == 1, r.output
        assert why in r.output
    service.init()
    assert service.store.instruments() == []
